"""`docre model list|promote|rollback`: look at a model store and move its `latest` by hand.

Kept apart from docre/cli/commands.py (train/evaluate/predict) because these
commands only touch the store's files (docre.registry.store), never a model's weights.
"""
from __future__ import annotations

import argparse
import sys


def _fail(e: Exception) -> None:
    """One line on stderr and exit status 2: store errors are user errors (bad URL, missing credentials)."""
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    raise SystemExit(2)


def _list(args: argparse.Namespace) -> None:
    from ..registry import store
    from ..registry.storage import exists
    try:
        store.check_store_access(args.store)
        if not exists(args.store):
            raise FileNotFoundError(f"{args.store}: no model store there (nothing at that path)")
        rows = store.list_versions(args.store)
        history = store.promotion_history(args.store)
    except (store.StoreAccessError, OSError) as e:
        _fail(e)
    if not rows:
        print(f"{args.store}: no model versions")
        return
    print(f"{'':2}{'version':<28} {'published':<21} {'status':<9} {'K':>2} {'F1':>7}  "
          f"{'vs champion [95% interval]':<26} compared with")
    for r in rows:
        f1 = f"{r['f1']:7.2f}" if isinstance(r["f1"], (int, float)) else f"{'-':>7}"
        k = "-" if r["compare_k"] is None else str(r["compare_k"])
        print(f"{'*' if r['latest'] else ' ':2}{r['version']:<28} {r['published'] or '-':<21} {r['status']:<9} "
              f"{k:>2} {f1}  {_interval(r.get('interval')):<26} {r['compared_with'] or '-'}")
        if r["status"] == "rejected" and r["reason"] and args.verbose:
            print(f"{'':4}rejected: {r['reason']}")
        drift = r.get("drift") or {}
        if args.verbose and drift.get("reference_version"):
            print(f"{'':4}drift: best promoted F1 {drift['reference_f1']:.2f} ({drift['reference_version']}, "
                  f"{drift.get('source')}), budget {_number(drift.get('budget'))}: "
                  f"{'pass' if drift.get('passed') else 'FAIL'}")
    print(f"* = latest; {len(history)} move(s) of latest in promotions.json; interval: the decision's paired-bootstrap "
          f"interval of challenger - champion F1 (- = no champion, or recorded before intervals)")
    if args.verbose:
        for e in history[-10:]:
            print(f"  {e['time']} {e['action']:<8} {e.get('previous') or '-'} -> {e['version']} by {e.get('by')}: "
                  f"{e.get('reason') or ''}")


def _interval(interval: dict | None) -> str:
    """"+0.12 [-0.40, +0.66]": the observed difference and its interval; "-" when the decision had none."""
    try:
        if not interval.get("resamples"):
            return "-"
        return f"{interval['observed']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}]"
    except (AttributeError, KeyError, TypeError):  # None, or a hand-edited version.json
        return "-"


def _number(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "-"


def _promote(args: argparse.Namespace) -> None:
    from ..registry import store
    try:
        store.check_store_access(args.store)
        entry = store.promote(args.store, args.version, args.reason or "manual promotion")
    except (store.StoreAccessError, OSError, ValueError) as e:
        _fail(e)
    if entry.get("unchanged"):
        print(f"{args.store}: {args.version} is already latest")
    else:
        print(f"{args.store}: latest {entry['previous'] or '(none)'} -> {entry['version']}")


def _rollback(args: argparse.Namespace) -> None:
    from ..registry import store
    try:
        store.check_store_access(args.store)
        entry = store.rollback(args.store, args.reason or "manual rollback")
    except (store.StoreAccessError, OSError, LookupError, ValueError) as e:
        _fail(e)
    print(f"{args.store}: rolled back, latest {entry['previous']} -> {entry['version']}")


def add_store_commands(sub: argparse._SubParsersAction) -> None:
    """Register `docre model ...` on the top-level subparsers."""
    model = sub.add_parser("model", help="list the versions in a model store, promote one, roll back latest")
    cmds = model.add_subparsers(dest="model_cmd", required=True)

    p = cmds.add_parser("list", help="versions, dates, F1, which is latest, which were rejected")
    p.add_argument("store", help="model store URL (local path, file://, s3://...)")
    p.add_argument("-v", "--verbose", action="store_true", help="also rejection reasons and the last promotions")
    p.set_defaults(func=_list)

    p = cmds.add_parser("promote", help="make VERSION the store's latest (atomic, recorded in promotions.json)")
    p.add_argument("store")
    p.add_argument("version")
    p.add_argument("--reason", help="recorded in promotions.json")
    p.set_defaults(func=_promote)

    p = cmds.add_parser("rollback", help="move latest back to the version that was latest before it")
    p.add_argument("store")
    p.add_argument("--reason", help="recorded in promotions.json")
    p.set_defaults(func=_rollback)
