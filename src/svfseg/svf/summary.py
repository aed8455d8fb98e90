"""Per-stage counts of converted layers, singular values and trainable SVF tensors.

Stage = first component of the qualified layer name (``layer2.0.conv1`` -> ``layer2``), so the table
lines up with the backbone stages the paper and the SVF repo train (layer2-4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from svfseg.svf.convert import svf_layers


@dataclass(frozen=True)
class SVFStageRow:
    """Counts for one stage: layers converted, singular values, trainable SVF tensor elements."""

    stage: str
    layers: int
    singular_values: int
    trainable: int


@dataclass
class SVFSummary:
    """Stage rows in module order; ``other_trainable`` counts trainable non-SVF parameters of the module."""

    rows: list[SVFStageRow] = field(default_factory=list)
    other_trainable: int = 0

    @property
    def total(self) -> SVFStageRow:
        """Sum over all stages."""
        return SVFStageRow(
            "total",
            sum(r.layers for r in self.rows),
            sum(r.singular_values for r in self.rows),
            sum(r.trainable for r in self.rows),
        )

    def stage(self, name: str) -> SVFStageRow:
        """The row of stage ``name``; KeyError lists the stages present."""
        for row in self.rows:
            if row.stage == name:
                return row
        raise KeyError(f"no SVF stage '{name}'; stages: {[r.stage for r in self.rows]}")

    def __str__(self) -> str:
        header = ("stage", "layers", "singular values", "trainable")
        body = [(r.stage, f"{r.layers:,}", f"{r.singular_values:,}", f"{r.trainable:,}") for r in self.rows]
        t = self.total
        body.append((t.stage, f"{t.layers:,}", f"{t.singular_values:,}", f"{t.trainable:,}"))
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
            return "  ".join([first, *rest])

        rule = "  ".join("-" * w for w in widths)
        lines = [line(header), rule, *(line(r) for r in body[:-1]), rule, line(body[-1])]
        lines.append(f"other trainable parameters (non-SVF): {self.other_trainable:,}")
        return "\n".join(lines)


def svf_summary(module: nn.Module) -> SVFSummary:
    """Count SVF layers, singular values and trainable SVF elements per stage of ``module``."""
    stats: dict[str, list[int]] = {}
    svf_ids: set[int] = set()
    for name, layer in svf_layers(module):
        stage = name.split(".", 1)[0] if name else "(root)"
        entry = stats.setdefault(stage, [0, 0, 0])
        entry[0] += 1
        entry[1] += layer.rank
        for _, p in layer.svf_tensors():
            svf_ids.add(id(p))
            if p.requires_grad:
                entry[2] += p.numel()
    other = sum(p.numel() for p in module.parameters() if p.requires_grad and id(p) not in svf_ids)
    rows = [SVFStageRow(stage, *counts) for stage, counts in stats.items()]
    return SVFSummary(rows=rows, other_trainable=other)
