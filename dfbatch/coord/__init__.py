"""Coordinators: one rate budget shared by every sender of a job, across threads, processes and
machines.

The engine holds a :class:`~dfbatch.engine.lease.Wallet` and knows only the ``SharedBudget``
protocol; this room connects wallets to a coordinator that keeps the account's
:class:`~dfbatch.engine.lease.LeaseBook`: ``leaser`` (the lease loop of one run, with the even
split when the coordinator is lost), ``local`` (a lock in this process: threads, Dask's
threaded scheduler), ``redis`` (a key in Redis: processes and machines), ``dask_scheduler``
(the scheduler of a ``distributed`` cluster keeps the books). ``resolve`` turns the
``limiter=`` option into one of them.

May import: the engine (and redis or distributed, lazily, when asked for). In: the ``limiter=``
option and the API's address and key (hashed, never stored); out: a ``SharedBudget``.
"""
