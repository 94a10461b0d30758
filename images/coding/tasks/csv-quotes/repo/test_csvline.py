import unittest

from csvline import parse, parse_line


class ParseLineTests(unittest.TestCase):
    def test_plain_fields(self):
        self.assertEqual(parse_line("a,b,,c"), ["a", "b", "", "c"])

    def test_quoted_delimiter(self):
        self.assertEqual(parse_line('1,"Smith, John",x'), ["1", "Smith, John", "x"])

    def test_doubled_quotes(self):
        self.assertEqual(parse_line('1,"She said ""hi"" and left",ok'), ["1", 'She said "hi" and left', "ok"])

    def test_parse_skips_blank_lines(self):
        self.assertEqual(parse("a,b\n\nc,d\n"), [["a", "b"], ["c", "d"]])


if __name__ == "__main__":
    unittest.main()
