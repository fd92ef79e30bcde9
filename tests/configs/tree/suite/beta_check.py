def check_beta():
    assert 1 + 1 == 2
