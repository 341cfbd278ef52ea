"""The tables of a run as text: Markdown (``table.md``, ``table_paper.md``) and booktabs LaTeX (``table.tex``,
``table_paper.tex``), rendered from the table model (:class:`anomaly_bench.reporting.tables.Tables`)."""

from __future__ import annotations

from anomaly_bench.reporting.health import HEALTH_MARK
from anomaly_bench.reporting.tables import DAGGER, PAPER_HEADERS, Block, Tables, paper_rows, row_empty


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def to_markdown(tables: Tables, title: str = "Results") -> str:
    """One Markdown table per dataset block (methods as rows), then the notes."""
    lines = [f"# {title}", ""]
    for b in tables.blocks:
        lines += [f"## {_md_escape(b.title)}", ""]
        lines.append("| Method | " + " | ".join(_md_escape(h) for _, h in b.columns) + " |")
        lines.append("|---|" + "|".join("---:" for _ in b.columns) + "|")
        for lab in tables.rows:
            if row_empty(b, lab):
                continue
            cells = []
            for key, _ in b.columns:
                c = b.cells[lab][key]
                cells.append(f"**{_md_escape(c.text)}**" if c.bold else _md_escape(c.text))
            lines.append(f"| {_md_escape(lab)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Notes:", ""] + [f"- {n}" for n in tables.notes] + [""]
    return "\n".join(lines)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", DAGGER: r"$^\dagger$", "<": r"$<$", ">": r"$>$", "≥": r"$\geq$",
                  "≈": r"$\approx$", "−": "-", "–": "--", HEALTH_MARK: r"$^\flat$", "×": r"$\times$",
                  "σ": r"$\sigma$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (underscores etc.); map ±, †, <, ≥ to math, the under-trained mark ⚑ to a flat."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_header(key: str, header: str) -> str:
    return "$p$ vs ref." if key == "p" else latex_escape(header)


def _latex_tabular(tables: Tables, blocks: list[Block]) -> list[str]:
    spec = "l" + "".join("c" * len(b.columns) for b in blocks)
    out = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    head, rules, col = [""], [], 2
    for b in blocks:
        n = len(b.columns)
        head.append(f"\\multicolumn{{{n}}}{{c}}{{{latex_escape(b.title)}}}")
        rules.append(f"\\cmidrule(lr){{{col}-{col + n - 1}}}")
        col += n
    out.append(" & ".join(head) + " \\\\")
    out.append(" ".join(rules))
    out.append(" & ".join(["Method"] + [_latex_header(k, h) for b in blocks for k, h in b.columns]) + " \\\\")
    out.append("\\midrule")
    for lab in tables.rows:
        if all(row_empty(b, lab) for b in blocks):
            continue
        cells = [latex_escape(lab)]
        for b in blocks:
            for key, _ in b.columns:
                c = b.cells[lab][key]
                cells.append(f"\\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text))
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return out


def to_latex(tables: Tables, caption: str = "Anomaly detection results.", label: str = "tab:anomaly-bench",
             blocks_per_tabular: int = 2) -> str:
    """booktabs tables: methods as rows, one column group per dataset block, ``blocks_per_tabular`` groups side
    by side per tabular (further groups go into further tabulars in the same float). Needs ``booktabs``."""
    out = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering", "\\small",
           f"\\caption{{{latex_escape(caption)}}}", f"\\label{{{label}}}"]
    k = max(1, int(blocks_per_tabular))
    for i in range(0, len(tables.blocks), k):
        if i:
            out.append("\\par\\medskip")
        out += _latex_tabular(tables, tables.blocks[i:i + k])
    notes = list(tables.notes)
    if tables.reference is not None and any(key == "p" for b in tables.blocks for key, _ in b.columns):
        notes.append(f"ref.: {tables.reference}.")
    if notes:
        text = " ".join(latex_escape(n) for n in notes)
        out.append(f"\\par\\vspace{{2pt}}\\parbox{{\\linewidth}}{{\\footnotesize {text}}}")
    out += ["\\end{table}", ""]
    return "\n".join(out)


def paper_markdown(tables: Tables) -> str:
    lines = ["# Results in the layout of the seed paper's Table 1", "",
             "| " + " | ".join(PAPER_HEADERS) + " |", "|---|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in paper_rows(tables)]
    lines += ["", "Precision/Specificity: both values (the paper prints one number for the two). "
              "Primary setting (inductive when present); subject level where subjects have several images.", ""]
    lines += ["Notes:", ""] + [f"- {n}" for n in tables.notes if not n.startswith(("AUC 9", "p vs"))] + [""]
    return "\n".join(lines)


def paper_latex(tables: Tables) -> str:
    out = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering", "\\small",
           "\\caption{Summary of results (layout of the seed paper's Table 1).}", "\\label{tab:anomaly-bench-paper}",
           "\\begin{tabular}{llccc}", "\\toprule", " & ".join(latex_escape(h) for h in PAPER_HEADERS) + " \\\\",
           "\\midrule"]
    out += [" & ".join(latex_escape(c) for c in row) + " \\\\" for row in paper_rows(tables)]
    out += ["\\bottomrule", "\\end{tabular}"]
    marks = " ".join(latex_escape(n) for n in tables.notes if n.startswith(HEALTH_MARK))
    if marks:
        out.append(f"\\par\\vspace{{2pt}}\\parbox{{\\linewidth}}{{\\footnotesize {marks}}}")
    out += ["\\end{table}", ""]
    return "\n".join(out)
