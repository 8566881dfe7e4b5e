from bertforge.train.steps import global_batch_at


def test_modernbert_base_warmup_at_key_points():
    args = dict(start=768, target=4608, warmup_tokens=50_000_000_000, multiple_of=64)
    assert global_batch_at(0, **args) == 768
    assert global_batch_at(25_000_000_000, **args) == (768 + (4608 - 768) // 2) // 64 * 64  # halfway: 2688
    assert global_batch_at(50_000_000_000, **args) == 4608
    assert global_batch_at(1_719_000_000_000, **args) == 4608
    sizes = [global_batch_at(t * 10**9, **args) for t in range(0, 51)]
    assert sizes == sorted(sizes) and all(s % 64 == 0 for s in sizes)


def test_no_warmup_means_the_target():
    assert global_batch_at(0, start=8, target=64, warmup_tokens=0) == 64
