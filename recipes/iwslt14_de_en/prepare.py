"""recipes/iwslt14_de_en/prepare.py: the IWSLT'14 data preparation;
the code is fairseq_xsam.recipes.iwslt14_prepare."""

from fairseq_xsam.recipes.iwslt14_prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
