"""The recipes' code: one shared base (:mod:`.base`: commands and hydra configs from a table of
settings, the run layout, resume, scoring), the Multi30k recipe (:mod:`.multi30k`) and its study
driver (:mod:`.study`, :mod:`.study_plan`), the IWSLT'14 recipe (:mod:`.iwslt14`,
:mod:`.iwslt14_prepare`, :mod:`.iwslt14_text`) and the CPU demo (:mod:`.demo`). The shell entry
points, hydra configs and the study's plan stay in the repository's ``recipes/`` folder.
Importing this package does not import fairseq (the recipes run fairseq as a subprocess)."""
