"""Benchmark results as JSON files that never replace an earlier result."""
import datetime
import json
import os


def save_results(path: str, payload: dict) -> str:
    """Write ``payload`` as JSON to ``path``; when ``path`` exists it is kept and the new file gets a time-stamped
    name beside it. Returns the path written."""
    out = path
    if os.path.exists(out):
        stem, ext = os.path.splitext(out)
        out = f'{stem}_{datetime.datetime.now():%Y%m%d_%H%M%S}{ext}'
        print(f'{path} exists: keeping it, writing {out}')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(payload, f, indent=1, default=str)
    print(f'wrote {out}')
    return out
