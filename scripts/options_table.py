"""Prints the README's option table from XSAMAdamWConfig (the single source of the options)."""

import dataclasses

from fairseq.optim.adam import FairseqAdamConfig

from fairseq_xsam.fairseq.optimizer import XSAMAdamWConfig


def table() -> str:
    inherited = {f.name for f in dataclasses.fields(FairseqAdamConfig)}
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(XSAMAdamWConfig):
        if f.name in inherited:
            continue
        default = "(per variant)" if f.default is None else f"`{f.default}`"
        rows.append(f"| `--{f.name.replace('_', '-')}` | {default} | {f.metadata['help']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
