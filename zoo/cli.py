"""The ``zoo`` command: tables for humans, ``--json`` for scripts, exit 2 with a clear message on errors."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import ZooError


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _emit(args, data, human: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if args.json else human)


def cmd_list(args) -> int:
    from .catalog import list_models
    from .loader import info

    rows = []
    for name in list_models(args.pattern):
        details = info(name)
        rows.append({"name": name, "strategy": details.get("strategy"), "arch": details.get("timm_arch"),
                     "domain": details.get("bn_variant") or details.get("domain"),
                     "bn_variants": ",".join(details.get("bn_variants", [])) if not details.get("bn_variant") else "",
                     "source": _where_from(details)})
    _emit(args, rows, _table(rows, ["name", "strategy", "arch", "domain", "bn_variants", "source"]) if rows
          else f"no published model matches {args.pattern!r}")
    return 0


def _where_from(details: dict) -> str:
    """A Hub repo id, or for a publisher's own file the host it is fetched from (converted on first use)."""
    if details.get("repo_id"):
        return details["repo_id"]
    url = (details.get("source") or {}).get("url")
    if url:
        from urllib.parse import urlsplit

        return f"upstream file ({urlsplit(url).hostname}), converted on first use"
    return "-"


def _text(value, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def cmd_info(args) -> int:
    from .loader import info

    details = info(args.name)
    lines = [_text(details.get("name", args.name))]
    for key in ("strategy", "method", "timm_arch", "domain", "steps", "repo_id", "revision", "license"):
        if details.get(key) is not None:
            lines.append(f"  {key:10s} {_text(details[key])}")
    cfg = details.get("pretrained_cfg") if isinstance(details.get("pretrained_cfg"), dict) else {}
    lines.append(f"  input      {_text(cfg.get('input_size'))} mean {_text(cfg.get('mean'))} std {_text(cfg.get('std'))}")
    lineage = details.get("lineage") if isinstance(details.get("lineage"), list) else []
    lines.append("  lineage    " + " -> ".join(f"{_text(s.get('name'))} ({_text(s.get('role'))})"
                                               for s in lineage if isinstance(s, dict)))
    variants = details.get("bn_variants") if isinstance(details.get("bn_variants"), list) else []
    lines.append(f"  bn         {', '.join(_text(v) for v in variants) or 'none'}")
    files = details.get("files") or details.get("weights") or {}
    for filename, record in sorted(files.items() if isinstance(files, dict) else [], key=lambda item: str(item[0])):
        record = record if isinstance(record, dict) else {}
        lines.append(f"  file       {_text(filename):28s} {_text(record.get('size')):>10s} B  "
                     f"sha256 {_text(record.get('sha256'))}")
    evaluations = details.get("evaluations") if isinstance(details.get("evaluations"), list) else []
    for record in evaluations:
        if isinstance(record, dict):
            value = record.get("value")
            shown = f"{value:.4f}" if isinstance(value, (int, float)) else _text(value)
            lines.append(f"  eval       {_text(record.get('protocol'))} {_text(record.get('data'))} "
                         f"{_text(record.get('metric'))} {shown}")
    _emit(args, details, "\n".join(lines))
    return 0


def _local_folder(name: str) -> bool:
    import os

    return os.sep in name or name.startswith(".") or os.path.isdir(name)


def cmd_download(args) -> int:
    from .catalog import resolve
    from .fetch import fetch

    done = []
    for name in args.names:
        if _local_folder(name):
            raise ZooError(f"{name[:200]} is a local folder: there is nothing to download. `zoo download` takes "
                           f"published names (see `zoo list`); load the folder with zoo.load({name[:200]!r}).")
        entry, _ = resolve(name)
        if entry.data.get("kind") == "upstream":  # the publisher's file, verified and converted into the cache
            from .upstream import ensure
            done.append({"name": entry.name, "file": "(converted)", "path": str(ensure(entry))})
            if not args.json:
                print(f"ok  {entry.name}  converted -> {done[-1]['path']}")
            continue
        if not entry.files:
            from .errors import IncompleteEntryError
            raise IncompleteEntryError(f"catalog entry {entry.name!r} lists no files; re-publish it with "
                                       f"`zoo publish --catalog`")
        for filename in sorted(entry.files):
            path = fetch(entry, filename)
            done.append({"name": entry.name, "file": filename, "path": path})
            if not args.json:
                print(f"ok  {entry.name}  {filename}  -> {path}")
    if args.json:
        _emit(args, done, "")
    return 0


def _refetch_advice(path: str, name: str) -> str:
    import os

    blob = os.path.realpath(path)
    if os.access(os.path.dirname(blob), os.W_OK) and os.access(os.path.dirname(path), os.W_OK):
        return f"CORRUPT (run `zoo download {name}` to re-fetch)"
    return ("CORRUPT (the HF cache is read-only: ask its owner to run `zoo download` there, or set HF_HUB_CACHE "
            "to a writable folder and run `zoo download`)")


def cmd_verify(args) -> int:
    """Re-hash every cached file of the given (default: all published) models in full."""
    from huggingface_hub import try_to_load_from_cache

    from .catalog import list_models, resolve
    from .integrity import sha256_file

    rows, bad = [], 0
    seen = set()
    for name in args.names or list_models():
        if _local_folder(name):
            raise ZooError(f"{name[:200]} is a local folder: `zoo verify` checks cached published models; "
                           f"zoo.load({name[:200]!r}) verifies a folder against its zoo.json.")
        entry, _ = resolve(name)
        if entry.name in seen:
            continue
        seen.add(entry.name)
        if entry.data.get("kind") == "upstream":
            from .upstream import cached
            rows.append({"name": entry.name, "file": "(converted copy)", "status": "cached" if cached(entry) else
                         "not converted (zoo.load or zoo import makes it)"})
            continue
        for filename, record in sorted(entry.files.items()):
            path = try_to_load_from_cache(entry.repo_id, filename, revision=entry.revision)
            if not isinstance(path, str):
                status = "not cached"
            elif sha256_file(path) == record["sha256"]:
                status = "ok"
            else:
                status, bad = _refetch_advice(path, entry.name), bad + 1
            rows.append({"name": entry.name, "file": filename, "status": status})
    _emit(args, rows, _table(rows, ["name", "file", "status"]) if rows else "nothing to verify")
    return 1 if bad else 0


def cmd_card(args) -> int:
    from .loader import card

    text = card(args.name)
    _emit(args, {"name": args.name, "card": text}, text)
    return 0


def cmd_convert(args) -> int:
    from .convert import convert
    from .names import ARCHS, ARCH_ALIASES

    timm_arch = ARCHS.get(ARCH_ALIASES.get(args.arch.lower(), args.arch.lower()), args.arch)
    meta = {"strategy": args.strategy, "method": args.method, "domain": args.domain, "license": args.license}
    output = convert(args.source, args.output, timm_arch=timm_arch, name=args.name or os.path.basename(
                     os.path.normpath(args.output)), meta={k: v for k, v in meta.items() if v},
                     keep_classifier=args.keep_classifier, source_format=args.format, preprocessing=args.preprocessing,
                     source_url=args.url)
    _emit(args, {"output": str(output)}, f"wrote {output}")
    return 0


def cmd_import(args) -> int:
    """Verify a publisher's file downloaded elsewhere and convert it into the zoo cache under its catalog name."""
    from .catalog import resolve
    from .errors import UnknownNameError
    from .upstream import import_file, is_upstream

    entry, _ = resolve(args.name)
    if not is_upstream(entry):
        raise UnknownNameError("upstream release", args.name, _upstream_names(),
                               hint=f"{entry.name} is published on the Hub: `zoo download {entry.name}` fetches it.")
    folder = import_file(entry, args.file)
    _emit(args, {"name": entry.name, "path": str(folder)}, f"imported {entry.name} -> {folder}; "
                                                           f"zoo.load({entry.name!r}) now works offline")
    return 0


def _upstream_names() -> list[str]:
    from .catalog import catalog

    return sorted(catalog()["upstream"])


def cmd_publish(args) -> int:
    from .publish import publish

    result = publish(args.checkpoint, args.repo_id, mirror=args.mirror, hub=args.hub, endpoint=args.endpoint,
                     catalog=args.catalog, base_for=args.base_for, cards=args.cards, name=args.name)
    where = args.mirror if args.mirror else (args.endpoint or "the Hub")
    _emit(args, result, f"published {result['name']} ({result['kind']}) to {where} as "
                        f"{args.repo_id}@{result['revision']}"
          + (f"; pinned in {args.catalog}" if args.catalog else
             "; no catalog updated (pass --catalog FILE, e.g. the one in $ZOO_HOME/catalog.json)"))
    return 0


def cmd_serve(args) -> int:
    import contextlib
    import signal
    import time

    from .mirror import serve

    def stop(signum, frame):  # SIGTERM (kill, systemd, docker stop) ends like Ctrl-C: olah is stopped too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with serve(args.mirror, args.port) as endpoint, contextlib.ExitStack() as pages:
        try:  # the announcement inside: a signal right after it is still a clean stop
            print(f"serving {args.mirror} at {endpoint}; use HF_ENDPOINT={endpoint} HF_HUB_DISABLE_XET=1 "
                  f"(Ctrl-C or SIGTERM stops)", flush=True)
            if not args.no_web:  # the web catalog (zoo/site), rebuilt when a publish changes the mirror
                from .site import serve_site
                url = pages.enter_context(serve_site(args.mirror, args.web_port, endpoint=endpoint))
                print(f"browse the models at {url}/", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_recommend(args) -> int:
    from .recommend import recommend

    candidates = [c for c in args.candidates.split(",") if c] if args.candidates else None
    ranking = recommend(args.data, candidates, args.budget_s, sample=args.sample, image_size=args.image_size,
                        crop_pct=args.crop_pct, domain=args.domain, arch=args.arch)
    _emit(args, ranking.as_dict(), str(ranking))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = argparse.ArgumentParser(prog="zoo", description="Pretrained self-supervised backbones, verified.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", parents=[common], help="published models (glob or substring filter)")
    p.add_argument("pattern", nargs="?")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("info", parents=[common], help="lineage, preprocessing, files, evaluations")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("download", parents=[common], help="prefetch models into the HF cache for offline use")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_download)
    p = sub.add_parser("verify", parents=[common], help="re-hash cached files against the catalog")
    p.add_argument("names", nargs="*")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("card", parents=[common], help="print a model card")
    p.add_argument("name")
    p.set_defaults(func=cmd_card)
    p = sub.add_parser("convert", parents=[common], help="import a MoCo/OpenSelfSup/torchvision checkpoint")
    p.add_argument("source")
    p.add_argument("output")
    p.add_argument("--arch", required=True, help="r50, r18, mnv2 or a timm architecture name")
    p.add_argument("--name")
    p.add_argument("--strategy")
    p.add_argument("--method")
    p.add_argument("--domain")
    p.add_argument("--license")
    p.add_argument("--keep-classifier", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--format", help="source format (default: detected from the keys): moco, openselfsup-moco, "
                   "openselfsup-simclr, openselfsup-byol, openselfsup, simclrv2-pytorch, plain")
    p.add_argument("--preprocessing", help="what the source was trained/evaluated with: moco, simclr, torchvision, "
                   "hpt:<domain> (required when the format does not imply it)")
    p.add_argument("--url", help="where the source file came from (recorded in the lineage)")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("import", parents=[common], help="verify + convert a downloaded upstream release (offline)")
    p.add_argument("name", help="an upstream catalog name, e.g. moco-imagenet-r50")
    p.add_argument("file", help="the publisher's file you downloaded")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("publish", parents=[common], help="validate a checkpoint folder, commit it to a git mirror "
                                                         "(olah) or the Hub, pin the commit in a catalog")
    p.add_argument("checkpoint")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mirror", help="mirror root (olah's mirrors-path): a git repo per model, history kept")
    where.add_argument("--hub", action="store_true", help="the Hub through huggingface_hub's HfApi (HF_TOKEN, "
                                                          "HF_ENDPOINT or --endpoint)")
    p.add_argument("--endpoint", help="with --hub: a Hub-compatible server instead of HF_ENDPOINT")
    p.add_argument("--repo-id", required=True, help="ORG/NAME by the Hub's rules")
    p.add_argument("--name", help="the model name (default: zoo.json's name)")
    p.add_argument("--catalog", help="catalog JSON to pin the published commit in")
    p.add_argument("--base-for", help="make this the BN base trunk for an arch (e.g. mnv2)")
    p.add_argument("--cards", help="also copy the generated card to this folder (the project's model_cards/)")
    p.set_defaults(func=cmd_publish)
    p = sub.add_parser("serve", help="serve a mirror root with olah on loopback")
    p.add_argument("mirror")
    p.add_argument("--port", type=int, help="default: a free port")
    p.add_argument("--web-port", type=int, help="port of the web catalog pages (default: a free one)")
    p.add_argument("--no-web", action="store_true", help="serve only the Hub API, no web catalog")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("recommend", parents=[common], help="rank checkpoints for a folder of labelled images")
    p.add_argument("data", help="<dir>/<class>/<image> (or <dir>/train/<class>/<image>)")
    p.add_argument("--candidates", help="comma-separated names or checkpoint folders (default: published ones)")
    p.add_argument("--budget-s", type=float, default=60.0, help="time for the whole ranking (the sample shrinks)")
    p.add_argument("--sample", type=int, default=500, help="at most this many images (stratified)")
    p.add_argument("--image-size", type=int, help="override each candidate's input size (e.g. 64 for 28 px data)")
    p.add_argument("--crop-pct", type=float, help="override each candidate's crop_pct")
    p.add_argument("--domain", help="keep only this domain's BN variants among the default candidates")
    p.add_argument("--arch", help="keep only this architecture family (mnv2, r50, ...)")
    p.set_defaults(func=cmd_recommend)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ZooError as error:
        print(f"zoo: error: {error}", file=sys.stderr)
        return 2
    except PermissionError as error:  # a read-only mirror, catalog or cards folder: say which, no traceback
        print(f"zoo: error: {str(error)[:900]}; check the path's permissions (or pass another path)", file=sys.stderr)
        return 2
    except OSError as error:  # a missing or unreadable file: the OS's message names the path
        print(f"zoo: error: {str(error)[:990]}", file=sys.stderr)
        return 2
    except Exception as error:
        from huggingface_hub.errors import HfHubHTTPError

        if not isinstance(error, HfHubHTTPError):
            raise
        from huggingface_hub import constants

        status = getattr(getattr(error, "response", None), "status_code", "?")
        print(f"zoo: error: the Hub at {constants.ENDPOINT} answered HTTP {status} ({type(error).__name__}): it does "
              f"not serve this repo, revision or file. Point HF_ENDPOINT at the server that has it (`zoo serve ROOT` "
              f"for a mirror), check the catalog's repo_id/revision (`zoo info NAME`), or set HF_TOKEN for a "
              f"private repo.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
