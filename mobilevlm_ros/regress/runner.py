"""Running the (bag, engine) pairs: as Ray tasks (local by default, a cluster with `address`), or
serially in this process. At most `workers` pairs run at once (ray.wait keeps that many in flight),
each in its own ROS domain from a pool of `workers` ids, so parallel nodes never hear each other.
A worker process that dies is Ray's to retry; a pair that raises (an unreadable bag) fails alone.

Each finished pair's records go to <pair_dir>/records.json (written atomically, when the result
arrives): that file is what "done" means to --resume.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from . import task

RECORDS = "records.json"
TASK_RETRIES = 3  # worker processes killed under a task (OOM, a lost node): rerun it, up to this often


@dataclass
class Pair:
    """One replay: `bag` through `engine`, its outputs in `pair_dir`."""
    bag: str
    key: str  # the bag's key (bag_paths.bag_keys)
    side: str  # "candidate" | "baseline"
    engine: str
    pair_dir: str


def load_records(pair_dir: str) -> Optional[dict]:
    """The records of a finished pair in `pair_dir`, else None."""
    try:
        with open(os.path.join(pair_dir, RECORDS)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_done(pair: Pair, engine_sha256: str) -> Optional[dict]:
    """The records of an earlier finished run of `pair` on the same engine, else None."""
    records = load_records(pair.pair_dir)
    return records if records and records.get("engine_sha256") == engine_sha256 else None


def save_done(pair: Pair, records: dict) -> None:
    path = os.path.join(pair.pair_dir, RECORDS)
    os.makedirs(pair.pair_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(records, f)
    os.replace(path + ".tmp", path)  # a run stopped mid-write leaves no half file that looks done


def domain_pool(workers: int) -> List[int]:
    """ROS domain ids for `workers` concurrent tasks: valid ids (1-101), none the caller's own."""
    own = os.environ.get("ROS_DOMAIN_ID", "")
    ids = [d for d in range(1, 102) if str(d) != own]
    if workers > len(ids):
        raise ValueError(f"--workers {workers}: at most {len(ids)} replays can run at once")
    return ids[len(ids) - workers:]


def run_serial(pairs: List[Pair], threads: int, max_new_tokens: int,
               on_done: Callable[[Pair, Optional[dict], Optional[str]], None]) -> None:
    """One pair after the other, in this process, in one domain."""
    domain = domain_pool(1)[0]
    for pair in pairs:
        try:
            records = task.replay_pair(pair.bag, pair.engine, pair.pair_dir, domain, threads, max_new_tokens)
        except Exception as e:  # noqa: BLE001 - a bag's failure is reported, the others go on
            on_done(pair, None, _one_line(e))
            continue
        on_done(pair, records, None)


def run_ray(pairs: List[Pair], workers: int, threads: int, max_new_tokens: int, address: Optional[str],
            on_done: Callable[[Pair, Optional[dict], Optional[str]], None]) -> Dict[str, object]:
    """The pairs as Ray tasks, `workers` at a time; what Ray ran on (address, CPUs)."""
    if address and "RAY_AUTH_MODE" not in os.environ and _has_ray_token():
        # `ray start --head` (2.59+) turns token auth on when a token exists, but ray.init(address=...)
        # sends it only in token mode (ray-project/ray#64755 review): without this, "InvalidAuthToken".
        # Read when ray is first imported: set before.
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    # "local": a new instance sized to this machine, even where `ray start` left a cluster (or its
    # stale address file): a plain ray.init() would join that one instead.
    init_args = {"address": address} if address else {"address": "local", "num_cpus": os.cpu_count()}
    ray.init(**init_args, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    in_flight: Dict[object, tuple] = {}  # ObjectRef -> (pair, its domain)
    try:
        remote = ray.remote(num_cpus=threads, max_retries=TASK_RETRIES)(task.replay_pair)
        free = domain_pool(workers)
        todo = list(pairs)
        while todo or in_flight:
            while todo and len(in_flight) < workers:
                pair, domain = todo.pop(0), free.pop()
                ref = remote.remote(pair.bag, pair.engine, pair.pair_dir, domain, threads, max_new_tokens)
                in_flight[ref] = (pair, domain)
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            pair, domain = in_flight.pop(ref)
            free.append(domain)
            try:
                records = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the task raised: this bag fails, the others go on
                on_done(pair, None, _one_line(e.cause) if e.cause is not None else str(e).splitlines()[-1])
                continue
            except ray.exceptions.RayError as e:  # retries used up, a lost node
                on_done(pair, None, _one_line(e))
                continue
            on_done(pair, records, None)
        return {"address": address or "local", "cluster_cpus": ray.cluster_resources().get("CPU"),
                "nodes": len(ray.nodes())}
    finally:
        for ref in in_flight:  # interrupted (Ctrl-C): no replay left running
            ray.cancel(ref, force=True)
        ray.shutdown()


def _has_ray_token() -> bool:
    """Whether Ray finds a cluster token here (its own places: env, RAY_AUTH_TOKEN_PATH, ~/.ray)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
