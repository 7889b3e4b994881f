"""recipes/iwslt14_de_en/recipe.py: the IWSLT'14 recipe (train, evaluate, configs);
the code is fairseq_xsam.recipes.iwslt14."""

from fairseq_xsam.recipes.iwslt14 import main

if __name__ == "__main__":
    raise SystemExit(main())
