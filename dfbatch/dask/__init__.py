"""The Dask front end: ``ddf.llm`` and ``dseries.llm`` on ``dask.dataframe`` objects.

``hook`` registers the accessors when ``dask.dataframe`` is imported (``import dfbatch`` never
imports dask itself); ``accessor`` builds a lazy frame whose partitions each go through the
pandas accessor's machinery on the workers, with ``meta`` built by the same column rules, and
makes ``rpm``/``tpm`` the whole job's limits by sharing them through a coordinator
(``dfbatch.coord``: an actor on a ``distributed`` cluster, a lock on the threaded scheduler).

May import: the pandas front end, jobs, coordinators and the engine. In: a Dask DataFrame or
Series and the accessor's keyword options; out: a lazy Dask DataFrame, partitions and index kept.
"""
