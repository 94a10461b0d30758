from grading_harness import CandidateTestCase


class HiddenTests(CandidateTestCase):
    module = "inifile"

    def test_url_with_query_string(self):
        config = self.mod.parse("[api]\nurl = https://example.com/search?q=orsbox&page=2\n")
        self.assertEqual(config["api"]["url"], "https://example.com/search?q=orsbox&page=2")

    def test_value_that_is_an_equation(self):
        config = self.mod.parse("formula = a = b + c\n")
        self.assertEqual(config["DEFAULT"]["formula"], "a = b + c")

    def test_value_starting_with_equals_and_empty_value(self):
        config = self.mod.parse("[x]\nsep===\nempty =\n")
        self.assertEqual(config["x"], {"sep": "==", "empty": ""})

    def test_sections_defaults_and_case(self):
        config = self.mod.parse("Name = top\n[ Server ]\nHOST = h\nhost = again\n")
        self.assertEqual(config, {"DEFAULT": {"name": "top"}, "Server": {"host": "again"}})

    def test_comments_are_not_pairs(self):
        config = self.mod.parse("; x = 1\n  # y = 2\n[s]\nz = 3 # not a comment\n")
        self.assertEqual(config, {"DEFAULT": {}, "s": {"z": "3 # not a comment"}})

    def test_garbage_line_is_a_parse_error(self):
        parse = self.mod.parse
        with self.assertRaises(ValueError):
            parse("[s]\njust some words\n")

    def test_empty_key_is_a_parse_error(self):
        parse = self.mod.parse
        with self.assertRaises(ValueError):
            parse("= value\n")

    def test_get_falls_back_to_default(self):
        config = self.mod.parse("timeout = 30\n[db]\nurl = postgres://u:p@h/db?sslmode=require\n")
        self.assertEqual(self.mod.get(config, "db", "URL"), "postgres://u:p@h/db?sslmode=require")
        self.assertEqual(self.mod.get_int(config, "db", "timeout"), 30)
        self.assertEqual(self.mod.get(config, "db", "missing", "d"), "d")
