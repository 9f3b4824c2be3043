"""cronbus logs: projects the JOBS, DISPATCH, RUNS and LOGS streams into the SQL history.

`app` is the composition root, `projector` consumes one stream, `store` writes the rows,
`precedence` holds the rules that make run rows independent of delivery order, and
`retention` trims old history.
"""
