def check_alpha():
    assert True
