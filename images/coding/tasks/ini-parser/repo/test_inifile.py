import unittest

import inifile


class ParseTests(unittest.TestCase):
    def test_sections_and_pairs(self):
        config = inifile.parse("[server]\nhost = example.org\nPort = 8080\n")
        self.assertEqual(config["server"], {"host": "example.org", "port": "8080"})

    def test_comments_and_blank_lines_are_skipped(self):
        config = inifile.parse("# a comment\n\n; another\n[a]\nx = 1\n")
        self.assertEqual(config, {"DEFAULT": {}, "a": {"x": "1"}})

    def test_value_may_contain_equals_signs(self):
        config = inifile.parse("[api]\nurl = https://example.com/search?q=orsbox&page=2\n")
        self.assertEqual(config["api"]["url"], "https://example.com/search?q=orsbox&page=2")


if __name__ == "__main__":
    unittest.main()
