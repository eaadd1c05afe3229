"""SCALE-UP as an HTTP firewall in front of a model (issue #20; docs/serving.md).

  # the zoo BadNets ResNet-20, threshold calibrated at alpha = 5% on the defender's images:
  SCALEUP_JAX_SERVE_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(32))") \\
    python -m eval.serve --calibrate --alpha 0.05
  python -m eval.serve --ckpt DIR --calibration detector.json --policy block --port 8080
  python -m eval.serve --nodetection                     # the same model without detection
  python -m eval.serve --ray --replicas 2 --calibration FILE   # on Ray Serve (pip install -e ".[ray]")

POST images to /v1/classify (PNG/JPEG files in the form field "image", a .npy
array, or JSON {"images": [...]}); the answer gives per image the label, SPC,
score and decision, and a request id. Flagged inputs go to the SQLite store
(--store) before the answer is sent; the operator reviews them at /review with
the token from --token_file or $SCALEUP_JAX_SERVE_TOKEN.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

from absl import app, flags, logging  # noqa: E402

from scaleup_jax import cli  # noqa: E402
from scaleup_jax.validation import InputError  # noqa: E402

flags.DEFINE_string('ckpt', None, 'Run directory of the served model (default: the zoo BadNets ResNet-20).')
flags.DEFINE_string('calibration', None, 'Saved calibrated detector (eval.detect --save_detectors, or '
                    'written by --calibrate); default runs/serve/<model>/calibration_spc_alpha<a>_<rule>.json.')
flags.DEFINE_bool('calibrate', False, "(Re)compute the calibration from the defender's benign test "
                  'images (--num_defense_per_class per class) and save it to --calibration first.')
flags.DEFINE_string('calibration_images', None, 'With --calibrate: a .npy (N, H, W, C) in [0, 1] of '
                    "the defender's own benign images (default: the defender split of the test set).")
flags.DEFINE_float('alpha', 0.05, 'False-positive budget of a new calibration (--calibrate).')
flags.DEFINE_string('rule', 'conformal', 'Calibration rule of --calibrate: conformal or plugin.')
flags.DEFINE_list('scales', ['3', '5', '7', '9', '11'], 'Scale set of a new calibration.')
flags.DEFINE_integer('num_defense_per_class', 100, 'Defender (calibration) images per class.')
flags.DEFINE_integer('seed', 0, 'Seed of the defender split (as eval.detect) and of the tie coins.')
cli.define_shared_flags('data_dir', 'download')
flags.DEFINE_bool('detection', True, 'Run SCALE-UP; --nodetection serves the bare model (the baseline).')
flags.DEFINE_enum('policy', 'flag', ['flag', 'block'], 'flag: return the label and mark it; block: withhold it.')
flags.DEFINE_list('buckets', ['1', '8', '32'], 'Batch sizes compiled at start-up.')
flags.DEFINE_string('method', 'auto', 'Scale batching: vmap, map or auto (per bucket).')
flags.DEFINE_float('max_wait_ms', 5.0, 'How long a request waits for a batch to fill.')
flags.DEFINE_integer('max_queue', 1024, 'Queued images beyond which requests get 503.')
flags.DEFINE_integer('max_images', 64, 'Images per request.')
flags.DEFINE_float('max_body_mb', 8.0, 'Request body size limit in MiB.')
flags.DEFINE_string('store', None, 'SQLite store of flagged inputs (default runs/serve/<model>/flags.sqlite).')
flags.DEFINE_bool('store_images', True, 'Keep flagged images (else hash and thumbnail only).')
flags.DEFINE_integer('retention_records', 100000, 'Keep at most this many flagged records.')
flags.DEFINE_float('retention_days', 0.0, 'Drop records older than this (0: no age limit).')
flags.DEFINE_enum('synchronous', 'FULL', ['FULL', 'NORMAL', 'EXTRA'], 'SQLite durability of a commit.')
flags.DEFINE_string('token_file', None, 'File holding the operator token (else $SCALEUP_JAX_SERVE_TOKEN; '
                    'neither: review endpoints off).')
flags.DEFINE_bool('cookie_secure', False, 'Mark the review session cookie Secure (behind TLS).')
flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on.')
flags.DEFINE_integer('port', 8000, 'Port (0: a free one, printed).')
flags.DEFINE_bool('access_log', False, "uvicorn's access log.")
flags.DEFINE_bool('ray', False, 'Deploy on Ray Serve instead of the embedded uvicorn server.')
flags.DEFINE_integer('replicas', 2, 'Ray Serve replicas (with --ray).')
flags.DEFINE_string('ray_address', None, 'Ray cluster to join (default: start a local one).')
flags.DEFINE_float('ray_cpus_per_replica', 1.0, 'CPUs reserved per replica (with --ray).')
flags.DEFINE_float('ray_gpus_per_replica', 0.0, 'GPUs per replica (with --ray, on GPU nodes).')
FLAGS = flags.FLAGS


def config_from_flags():
  from scaleup_jax.serve.app import ServeConfig
  return ServeConfig(
      ckpt=FLAGS.ckpt, calibration=FLAGS.calibration, calibrate=FLAGS.calibrate,
      calibration_images=FLAGS.calibration_images, alpha=FLAGS.alpha,
      rule=FLAGS.rule, scales=tuple(float(s) for s in FLAGS.scales),
      num_defense_per_class=FLAGS.num_defense_per_class, seed=FLAGS.seed,
      data_dir=FLAGS.data_dir, download=FLAGS.download, detection=FLAGS.detection,
      policy=FLAGS.policy, buckets=tuple(int(b) for b in FLAGS.buckets), method=FLAGS.method,
      max_wait_ms=FLAGS.max_wait_ms, max_queue=FLAGS.max_queue, max_images=FLAGS.max_images,
      max_body_bytes=int(FLAGS.max_body_mb * (1 << 20)), store=FLAGS.store,
      store_images=FLAGS.store_images, retention_records=FLAGS.retention_records,
      retention_days=FLAGS.retention_days, synchronous=FLAGS.synchronous,
      token_file=FLAGS.token_file, cookie_secure=FLAGS.cookie_secure, host=FLAGS.host,
      port=FLAGS.port, access_log=FLAGS.access_log)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from scaleup_jax.serve.app import serve
  from scaleup_jax.serve.store import StoreError
  with cli.friendly_errors():
    try:
      config = config_from_flags()
      if FLAGS.ray:
        from scaleup_jax.serve import ray_app
        ray_app.serve_on_ray(config, FLAGS.replicas, address=FLAGS.ray_address,
                             cpus_per_replica=FLAGS.ray_cpus_per_replica,
                             gpus_per_replica=FLAGS.ray_gpus_per_replica)
      else:
        serve(config, say=lambda s: print(s, flush=True))
    except StoreError as e:
      raise InputError(str(e)) from None  # a store the flags point at is unusable: one line


if __name__ == '__main__':
  app.run(main)
