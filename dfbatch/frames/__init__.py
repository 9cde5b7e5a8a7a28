"""The pandas front end: ``df.llm`` and ``series.llm``.

``hook`` registers the accessors when pandas is imported (``import dfbatch`` never imports pandas
itself); ``accessor`` validates the caller's object and options; ``columns`` takes the rows out of
the frame, runs the job and puts the answers back as new columns, in row order, index kept.

May import: jobs, the cache and the engine. In: a DataFrame or Series and keyword options; out: a
new DataFrame (the caller's is never modified), with the run's figures in ``attrs["dfbatch"]``.
"""
