"""Text views: the annotated source of an accessor and the context of one operation."""

from __future__ import annotations

from endoscope_source import SourceAccessor


class Block:
    def forward(self, x):
        h = self.ln(x)
        # a comment
        return self.c_proj(self.act(self.c_fc(h)))

    @staticmethod
    def multi(x):
        return (x.strip()
                 .split(",")), "é" + str(x)  # fmt: skip


FIRST = Block.forward.__code__.co_firstlineno


def test_accessor_lists_names_beside_their_lines() -> None:
    text = str(SourceAccessor(Block.forward, path="model.h.0"))

    def n(offset: int) -> str:
        return f"{FIRST + offset:>2}"

    assert text.splitlines() == [
        f"model.h.0.source: Block.forward  [{__file__}:{FIRST}]",
        f"                  {n(0)} | def forward(self, x):",
        f" self_ln_0     -> {n(1)} |     h = self.ln(x)",
        f"                  {n(2)} |     # a comment",
        f" self_c_fc_0   -> {n(3)} |     return self.c_proj(self.act(self.c_fc(h)))",
        " self_act_0    ->      +",
        " self_c_proj_0 ->      +",
    ]


def test_operation_underlines_its_call() -> None:
    acc = SourceAccessor(Block.forward, path="model.h.0")
    lines = str(acc.self_act_0).splitlines()
    assert (
        lines[0] == f"model.h.0.source.self_act_0: self.act(self.c_fc(h))  [{__file__}:{FIRST + 3}]"
    )
    assert lines[-2] == f" -> {FIRST + 3} |     return self.c_proj(self.act(self.c_fc(h)))"
    assert lines[-1] == "       |                        " + "^" * len("self.act(self.c_fc(h))")


def test_multiline_calls_and_non_ascii_columns() -> None:
    acc = SourceAccessor(Block.multi)
    text = str(acc)
    assert " split_0   -> " in text and " str_0     ->      +" in text
    split = str(acc.split_0).splitlines()
    assert split[0].startswith('source.split_0: x.strip() .split(",")  [')
    assert [line.count("^") for line in split if "|" in line and "^" in line] == [
        len("x.strip()"),
        len('.split(",")'),
    ]
    str_op = str(acc.str_0).splitlines()
    line, carets = str_op[-2], str_op[-1]
    start = carets.index("^")
    assert line[start : start + len("str(x)")] == "str(x)"
    assert carets.count("^") == len("str(x)")
