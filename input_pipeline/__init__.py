"""UPOCR input pipeline: sources -> per-task grain pipelines -> batches.

Entry points: `pipeline.create_train_iterator`, `pipeline.create_eval_dataset`
(see pipeline.py for the batch layout), `sources.make_source`, the CLIs
`input_pipeline.preview`, `input_pipeline.write_synthetic` and
`input_pipeline.sources.tfds_builders`.
"""
