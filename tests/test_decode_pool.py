"""The ordered decode pool: order kept, memory bounded, and a dying worker costs one clip, not the run."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

from ingest.decode_pool import OrderedDecoder


def square_or_die(items):
    out = []
    for x in items:
        if x == "die":
            os._exit(1)  # what a segfaulting codec or the OOM killer does to a worker
        out.append(x * x)
    return out


def _pool():
    return ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"))


def test_results_in_order():
    dec = OrderedDecoder(_pool, square_or_die, chunk=3, max_pending=6)
    try:
        assert list(dec.map(range(50))) == [x * x for x in range(50)]
    finally:
        dec.close()


def test_a_worker_dying_costs_only_its_clip():
    items = list(range(10)) + ["die"] + list(range(10, 20))
    dec = OrderedDecoder(_pool, square_or_die, chunk=4, max_pending=8, on_crash=lambda item: ("crashed", item))
    try:
        out = list(dec.map(items))
    finally:
        dec.close()
    assert out == [x * x for x in range(10)] + [("crashed", "die")] + [x * x for x in range(10, 20)]
