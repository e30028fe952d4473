"""The ingest write path: where a set is written, what a run does with it, and how rows are committed.

    output      SetOutput: the set's root (local or URL) and staging folder; the --overwrite swap
    plan        what decides a set's rows (kept in _work/plan.json, then the manifest)
    prepare     Status: what this run does with its output (new, resume, repair, ...), decided on rank 0
    repair      a finished set checked, and reopened as an unfinished one when damaged
    ledger      one rank's account of the clips it read and may pack (--limit, committed and duplicate keys)
    packer      rows -> blocks (lake.blocks.make_block), per split
    background  the thread that writes blocks into rotating shards and commits them
    journal     the commit records of every rank, and what they add up to
    commit      one rank's protocol: segments of units, each closed and journalled
    merge       rank 0, at the end: journals -> manifest, index, quarantine

One writer per set: lake.setlock, which `shards cp` takes too.

Who produces the rows (ingest.pipeline decodes and encodes, ingest.precomputed imports vectors)
is outside: both hand `commit.RankCommit` a per-segment `process(segment, packer)`.
"""
