def check_gamma():
    assert "slow"
