"""recipes/multi30k_de_en/study.py: the Multi30k optimizer study (run, status, report);
the code is fairseq_xsam.recipes.study."""

from fairseq_xsam.recipes.study import main

if __name__ == "__main__":
    raise SystemExit(main())
