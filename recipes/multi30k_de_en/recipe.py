"""recipes/multi30k_de_en/recipe.py: the Multi30k recipe (prepare, train, evaluate, configs);
the code is fairseq_xsam.recipes.multi30k."""

from fairseq_xsam.recipes.multi30k import main

if __name__ == "__main__":
    raise SystemExit(main())
