from grading_harness import CandidateTestCase


class HiddenTests(CandidateTestCase):
    module = "csvline"

    def test_doubled_quotes_in_the_middle(self):
        self.assertEqual(self.mod.parse_line('x,"a ""b"" c"'), ["x", 'a "b" c'])

    def test_field_that_is_only_a_quote(self):
        self.assertEqual(self.mod.parse_line('"""",end'), ['"', "end"])

    def test_doubled_quotes_at_the_edges(self):
        self.assertEqual(self.mod.parse_line('"""quoted"""'), ['"quoted"'])

    def test_empty_quoted_field(self):
        self.assertEqual(self.mod.parse_line('"",b'), ["", "b"])

    def test_quoted_delimiter_and_doubled_quote(self):
        self.assertEqual(self.mod.parse_line('"5"" tall, 3"" wide",ok'), ['5" tall, 3" wide', "ok"])

    def test_other_delimiter(self):
        self.assertEqual(self.mod.parse_line('a;"b;c";""""', ";"), ["a", "b;c", '"'])

    def test_trailing_empty_field(self):
        self.assertEqual(self.mod.parse_line("a,b,"), ["a", "b", ""])

    def test_open_quote_is_an_error(self):
        parse_line = self.mod.parse_line
        with self.assertRaises(ValueError):
            parse_line('a,"b')

    def test_parse_whole_text(self):
        text = 'id,comment\n1,"ok, ""fine"""\n\n2,plain\n'
        self.assertEqual(self.mod.parse(text), [["id", "comment"], ["1", 'ok, "fine"'], ["2", "plain"]])
