"""``llm-tflite plugins``: what is loaded, and from which distribution."""

from __future__ import annotations

from llm_tflite.cli.common import add_json, print_json


def cmd_plugins(args) -> int:
    from llm_tflite.plugins import registry
    from llm_tflite.plugins.manager import distribution_of

    rows = []
    for kind, found in (("family", registry.families()), ("strategy", registry.strategies()),
                        ("preset", registry.presets())):
        for name, reg in sorted(found.items()):
            rows.append({"kind": kind, "name": name, "plugin": reg.plugin,
                         "distribution": distribution_of(reg.plugin),
                         "description": getattr(reg.item, "description", "")})
    if args.json:
        print_json(rows)
        return 0
    for kind, heading in (("family", "families:"), ("strategy", "strategies:"), ("preset", "presets:")):
        print(heading)
        for row in (r for r in rows if r["kind"] == kind):
            print(f"  {row['name']:<22} {row['distribution']:<22} {row['description']}")
    return 0


def add_commands(cli) -> None:
    p = cli.add_parser("plugins", help="list model families, quantization strategies and presets")
    add_json(p)
    p.set_defaults(func=cmd_plugins)
