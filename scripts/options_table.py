"""Prints the README's option table from fairseq_xsam.settings.OPTIONS (the single source of the
options, from which xsam_adamw's config dataclass and the PyTorch XSAM's defaults also come)."""

from fairseq_xsam.settings import markdown_table

if __name__ == "__main__":
    print(markdown_table())
