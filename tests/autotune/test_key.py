from kernelkit.autotune.key import bucket, family, key_dims, make_key
from kernelkit.core import Problem


def test_bucket_is_monotone_and_coarse():
    values = [bucket(n) for n in range(0, 5000)]
    assert values == sorted(values)
    assert all(bucket(n) >= n for n in range(5000))
    assert bucket(7) == 7 and bucket(16) == 16
    assert bucket(1000) == bucket(1024) == 1024 and bucket(1025) == 1536 == bucket(1536)
    assert len(set(values)) < 40  # a new size rarely means a new tuning run


def test_key_round_trip():
    p = Problem("matmul", ((1, 100, 200), (1, 200, 300)), "float32", "NT", "numpy", "cpu",
                (("bias", True), ("activation", "relu")))
    k = make_key(p)
    assert key_dims(k) == (1, 128, 256, 1, 256, 384)
    assert family(k) == family(make_key(Problem("matmul", ((1, 9, 9), (1, 9, 9)), "float32", "NT",
                                                        "numpy", "cpu",
                                                        (("bias", True), ("activation", "relu")))))
    assert "numpy:cpu" in k and "NT" in k and "activation=relu" in k
