"""UPOCR configurations.

Usage: ``--config=VARIANT`` (from any directory; also ``upocr:VARIANT`` or
the path ``configs/upocr.py:VARIANT``, see upocr_jax/cli_flags.py) with VARIANT
one of

* ``paper``: the exact model and recipe of the UPOCR paper (SwinV2-S encoder,
  512x512, 16 images per task per step, 80k steps).
* ``tiny``: a small model for tests and the CPU demo (trains on synthetic data in
  minutes on two cores).

Any field can be overridden on the command line, e.g.
``--config.train.steps=1000 --config.model.dtype=bfloat16``; a run shorter
than the warm-up also sets ``--config.optim.warmup_steps`` (the error says
so).
"""

import ml_collections

from configs import data_config
from configs import loss_optim_config
from upocr_jax import tasks


def _model_config(variant: str) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.tasks = tasks.TASKS
  m.patch_size = 4
  m.mlp_ratio = 4.0
  # Mixed precision (upocr_jax/models/precision.py). dtype: the compute dtype
  # of matmuls/convs ("bfloat16" on TPUs / recent GPUs). residual_dtype: the
  # residual stream between blocks (the carry of scanned stages); float32 as
  # PyTorch autocast, "bfloat16" halves its activation memory. Parameters and
  # optimizer state, norms, softmax, the position-bias MLP, the cosine
  # attention's normalisation and scale, the losses and the VGG Gram matrices
  # stay float32 whatever these say; evaluation and prediction run in float32
  # at HIGHEST matmul precision.
  m.dtype = "float32"
  m.residual_dtype = "float32"
  # Rematerialise every transformer block in the backward pass (saves
  # activations). remat_policy: what a block keeps, "full" (its input only)
  # or "dots" (also its linears' outputs; recomputes the element-wise work and
  # attention scores): see REMAT_POLICIES in upocr_jax/models/swinv2.py.
  m.remat = False
  m.remat_policy = "full"
  # The attention's score path (upocr_jax/models/attention.py): "folded"
  # (the per-head scale multiplied into the queries), "reference" (the
  # textbook order) or "deferred" (folded, and the softmax division applied to
  # the (N, d) output); benchmarks/README.md has the timings behind the default.
  m.attention_impl = "folded"
  # Stages of 2+ blocks run as one lax.scan over their blocks (the shift is
  # passed as data): the same numbers, with one block body compiled per stage
  # (unrolled, the paper model's 18-block stages dominate compile time).
  # Parameters and checkpoints are unchanged.
  m.scan_blocks = True
  # True masks zero-padded tokens out of window attention. The official code does
  # not, so official weights expect False.
  m.mask_padding = False
  m.encoder = ml_collections.ConfigDict()
  m.decoder = ml_collections.ConfigDict()
  if variant == "paper":
    m.encoder.embed_dim = 96
    m.encoder.depths = (2, 2, 18, 2)
    m.encoder.num_heads = (3, 6, 12, 24)
    m.encoder.window_size = 16
    m.encoder.pretrained_window_size = 16
    m.encoder.drop_path_rate = 0.3
    m.decoder.depths = (2, 18, 2, 2, 2)
    m.decoder.num_heads = (24, 12, 6, 3, 2)
    m.decoder.window_size = 8
    m.decoder.pretrained_window_size = 8
    m.decoder.drop_path_rate = 0.3
  elif variant == "tiny":
    # Sized for the CPU demo (64x64 images, minutes on two cores). Embed 24:
    # the decoder's last stages are 8x embed / 32 and / 64 wide, and the
    # full-resolution head reads chunks of 3 channels per pixel (embed 16
    # leaves 2, too few to redraw a background). One block per stage and
    # 4x4 windows (the 2x2 and 4x4 deep maps are not padded to 8x8): 40%
    # more steps per second than 8x8 windows, the same loss per step.
    m.encoder.embed_dim = 24
    m.encoder.depths = (1, 1, 1, 1)
    m.encoder.num_heads = (1, 2, 2, 4)
    m.encoder.window_size = 4
    m.encoder.pretrained_window_size = 4
    # A minutes-long run from scratch is underfitting, not overfitting: no
    # stochastic depth.
    m.encoder.drop_path_rate = 0.0
    m.decoder.depths = (1, 1, 1, 1, 1)
    m.decoder.num_heads = (4, 2, 2, 1, 1)
    m.decoder.window_size = 4
    m.decoder.pretrained_window_size = 4
    m.decoder.drop_path_rate = 0.0
  else:
    raise ValueError(f"configs/upocr.py: unknown variant {variant!r}; "
                     "expected one of 'paper', 'tiny'")
  return m


def _parallel_config(config: ml_collections.ConfigDict) -> None:
  # Mesh axes: data parallel, fully sharded data parallel (params/optimizer
  # sharded, batch split too) and tensor parallel. -1 takes all remaining
  # devices. E.g. FSDP on 8 devices: --config.mesh.shape="(1,8,1)".
  config.mesh = ml_collections.ConfigDict()
  config.mesh.axes = ("data", "fsdp", "tensor")
  config.mesh.shape = (-1, 1, 1)
  config.sharding = ml_collections.ConfigDict()
  config.sharding.batch_axes = ("data", "fsdp")
  # Logical axis name (see upocr_jax/models) -> mesh axis / axes / None
  # (replicated). Parameters, then activations (the NHWC maps between stages;
  # their batch dim, act_batch, always follows batch_axes above).
  config.sharding.rules = (
      ("embed", "fsdp"),       # model width: input features of linears
      ("mlp", "tensor"),       # MLP hidden features
      ("embed_out", "tensor"), # output features of patch merge/split, proj
      ("heads", "tensor"),     # q/k/v features (whole heads per shard)
      ("conv_in", "fsdp"),
      ("conv_out", "tensor"),
      ("norm", None), ("heads_only", None), ("cpb", None), ("tasks", None),
      ("prompt", None),        # task prompt features
      # Activations. E.g. spatial sharding of the decoder's H/4..H maps over
      # the tensor axis: ("act_height_hires", "tensor").
      ("act_height", None), ("act_width", None), ("act_embed", None),
      ("act_height_hires", None), ("act_width_hires", None),
  )
  # Multi-host: set enabled (or run where JAX detects a cluster: TPU pod,
  # SLURM, ...) to call jax.distributed.initialize; None fields = autodetect.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  config.distributed.coordinator_address = ml_collections.FieldReference(
      None, field_type=str)
  config.distributed.num_processes = ml_collections.FieldReference(
      None, field_type=int)
  config.distributed.process_id = ml_collections.FieldReference(
      None, field_type=int)


def _train_config(variant: str) -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  paper = variant == "paper"
  t.steps = 80_000 if paper else 3_800
  t.log_every = 50 if paper else 25
  t.checkpoint_every = 2_000 if paper else 1_000
  t.keep_checkpoints = 3
  t.preview_every = 1_000                     # PNG grid of predictions
  t.eval_every = 10_000 if paper else 0       # 0: none during training
  t.final_eval = True                         # evaluate after the last step
  return t


def get_config(arg: str = "paper") -> ml_collections.ConfigDict:
  """Returns the config of variant ``arg`` ('paper' or 'tiny')."""
  variant = arg or "paper"
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.seed = 0
  config.model = _model_config(variant)
  config.data = data_config.get_data_config(variant)
  config.train = _train_config(variant)
  # Evaluations during training (train.eval_every) and after the last step
  # (train.final_eval); see upocr_jax/evaluation/evaluate.py run_evals.
  config.evals = ml_collections.ConfigDict()
  config.evals.datasets = (("scut_enstext", "textseg", "tampered_ic13")
                           if variant == "paper" else ("synthetic",))
  config.evals.max_examples = -1
  config.evals.mssim_mode = "official"
  config.evals.seg_threshold = tasks.SEG_THRESHOLD
  config.loss = loss_optim_config.get_loss_config(variant)
  config.optim = loss_optim_config.get_optim_config(variant)
  if variant == "tiny":
    # The paper's 0.1x encoder lr assumes a pre-trained encoder; the demo
    # trains from scratch.
    config.optim.encoder_lr_ratio = 1.0
    # The final evaluation's held-out set: per image, the model's PSNR minus
    # the identity's varies by about 5 dB, so 32 images left a +-1.2 dB
    # standard error on the text-removal margin; 128 take ~4 s more.
    config.data.synthetic.num_eval = 128
  _parallel_config(config)
  # A weight directory (upocr-convert output, or WORKDIR/weights of a run) to
  # start from, e.g. the released pre-training weights.
  config.init_from = ml_collections.FieldReference(None, field_type=str)
  return config
