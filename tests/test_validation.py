"""scaleup_jax.validation: the one image check, on host arrays and inside jit, as the attacks use it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaleup_jax.attacks import adversarial, physical, wanet
from scaleup_jax.validation import InputError, check_image_batch, check_images


@pytest.mark.parametrize('images, match', [
    (np.zeros((32, 32, 3), np.float32), r'shape \(B, H, W, C\); got rank 3'),
    (np.zeros((0, 4, 4, 3), np.float32), 'empty'),
    (np.zeros((2, 4, 4, 3), np.uint8), 'divide by 255'),
    (np.full((2, 4, 4, 3), 1.5, np.float32), r'lie in \[0, 1\]'),
    (np.full((2, 4, 4, 3), np.nan, np.float32), 'NaN/inf'),
])
def test_check_images_names_what_is_wrong(images, match):
  with pytest.raises(InputError, match=match):
    check_images(images)


def test_check_image_batch_runs_inside_jit_and_rejects_rank_and_dtype():
  double = jax.jit(lambda x: (check_image_batch(x), 2 * x)[1])
  np.testing.assert_array_equal(double(jnp.ones((1, 2, 2, 3))), 2.0)
  with pytest.raises(InputError, match='got rank 3'):
    double(jnp.ones((2, 2, 3)))
  with pytest.raises(InputError, match='floating point'):
    check_image_batch(jnp.ones((1, 2, 2, 3), jnp.int32))


@pytest.mark.parametrize('call', [
    lambda x: physical.adjust_brightness(x, 1.2),
    lambda x: wanet.grid_sample(x, wanet.identity_grid(4, 4)),
    lambda x: adversarial.targeted_uap(jax.random.key(0), lambda v, y: y.reshape(len(y), -1),
                                       {}, x, 0, steps=1),
])
def test_attacks_reject_bad_images_with_the_shared_message(call):
  with pytest.raises(InputError, match=r'images must have shape \(B, H, W, C\); got rank 3'):
    call(np.zeros((4, 4, 3), np.float32))
