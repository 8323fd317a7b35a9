import bananaline


def test_all_is_exactly_the_public_api():
    assert sorted(dir(bananaline)) == sorted(bananaline.__all__)
    assert set(bananaline.__all__) == set(bananaline._EXPORTS)
    for name in bananaline.__all__:
        assert getattr(bananaline, name) is not None
    assert bananaline.ImageClient.__module__ == "bananaline.client"
