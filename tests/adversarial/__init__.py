"""The project's own adversarial suite (issue 11, point D): a hostile exchange and seeded, reproducible
stateful runs of the engine against it, checking the one promise after every step.

    hostile.py       HostileExchange: the paper exchange with switchable, seeded faults, and the truth of every post
    watch.py         the invariants, each violation named after the promise and the issue point it guards
    virtual_time.py  an asyncio loop whose clock jumps when every task waits (anyio sleeps cost nothing)
    paper_run.py     the long stateful run on the paper exchange (CI: short; bench/adversarial.py: long)
    clob_run.py      the same against tests/fakeclob through the real PolymarketExchange, fewer steps

The package is importable from bench/ with tests/ on sys.path, as fakeclob is.
"""
