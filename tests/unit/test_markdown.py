"""Markdown frontmatter: plain YAML data becomes metadata; anything else stays text."""

from __future__ import annotations

import time

import pytest
import yaml

from menos import markdown


def test_frontmatter_becomes_metadata() -> None:
    note = markdown.parse("---\ntitle: Hi\ndate: 2024-01-01\ntags: [a, b]\n---\n# H\ntext")
    assert note.metadata == {"title": "Hi", "date": "2024-01-01", "tags": ["a", "b"]}
    assert note.text == "# H\ntext"


def test_a_note_without_frontmatter_is_kept_whole() -> None:
    """Thematic breaks (`---`) inside a note are text, not a frontmatter block."""
    raw = "# Title\n\nIntro.\n\n---\n\nSection two.\n\n---\n\nSection three.\n"
    assert markdown.parse(raw) == markdown.Note(metadata={}, text=raw.strip())


def test_json_frontmatter_is_read_too() -> None:
    note = markdown.parse('{\n"title": "From JSON"\n}\nbody')
    assert note == markdown.Note(metadata={"title": "From JSON"}, text="body")


@pytest.mark.parametrize(
    "frontmatter",
    [
        'title: "a\\0b"',  # YAML's escape makes a NUL no text field or JSON column accepts
        '"a\\0": 1',
        'tags: ["x", "y\\0"]',
        'title: "a\\ud800b"',  # a lone surrogate: not UTF-8, so not storable either
        "x: " + "[" * 3000 + "]" * 3000,  # deeper than the parser goes
        "title: [unclosed",
        "base: &b {k: v}\nother: *b",  # aliases are refused
        "- Buy milk\n- Call the plumber",  # a list is not a mapping: it is the note's text
        "Just one line",  # neither is a scalar
    ],
)
def test_frontmatter_that_is_not_plain_data_stays_text(frontmatter: str) -> None:
    raw = f"---\n{frontmatter}\n---\nbody"
    assert markdown.parse(raw) == markdown.Note(metadata={}, text=raw)


def test_literal_backslash_sequences_are_kept() -> None:
    note = markdown.parse('---\ntitle: "a \\\\u0000 b"\n---\nbody')
    assert note.metadata == {"title": "a \\u0000 b"}


def test_alias_expansion_is_not_paid_for() -> None:
    """Seven levels of ten aliases would expand 400 bytes into 10 million values."""
    levels = "".join(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 8))
    raw = "---\na0: &a0 [x,x,x,x,x,x,x,x,x,x]\n" + levels + "---\nbody"
    started = time.process_time()
    assert markdown.parse(raw).metadata == {}
    assert time.process_time() - started < 5  # expanding it took 13 s and 680 MB


def test_a_leading_byte_order_mark_does_not_hide_the_frontmatter() -> None:
    """A note saved with a UTF-8 BOM keeps its frontmatter, and the BOM is not in its text."""
    note = markdown.parse("\ufeff---\ntitle: Hi\n---\nbody")
    assert note == markdown.Note(metadata={"title": "Hi"}, text="body")
    assert markdown.parse("\ufeffJust text.").text == "Just text."


def test_lines_ended_by_a_carriage_return_alone_are_lines() -> None:
    """A lone CR ends a line in markdown (classic Mac editors write them): the first heading
    is the title, not the whole note, and the frontmatter is read."""
    note = markdown.parse("# Queues\rPostgreSQL makes a job queue.\r\rMore text.\r")
    assert markdown.choose_title(None, note, None) == "Queues"
    assert note.text == "# Queues\nPostgreSQL makes a job queue.\n\nMore text."
    fm = markdown.parse("---\rtitle: Hi\rtags: [a]\r---\rbody\r")
    assert fm == markdown.Note(metadata={"title": "Hi", "tags": ["a"]}, text="body")


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("[null, true, 3, 1.5, [x, y], {a: b}, kept]", ["3", "1.5", "kept"]),
        ("3", ["3"]),
        ("null", []),
        ("false", []),
        ("{a: b}", []),
        ("a, b", ["a", "b"]),
    ],
)
def test_only_strings_and_numbers_in_frontmatter_tags_are_tags(
    tags: str, expected: list[str]
) -> None:
    """Null, booleans, lists and mappings never become tags such as 'None' or "['x', 'y']"."""
    note = markdown.parse(f"---\ntags: {tags}\n---\nbody")
    assert markdown.frontmatter_tags(note.metadata) == expected


@pytest.mark.parametrize(
    ("value", "title"),
    [("12345", "12345"), ("1.5", "1.5"), ("true", "true"), ("2024-01-02", "2024-01-02")],
)
def test_a_scalar_frontmatter_title_is_used_as_text(value: str, title: str) -> None:
    """`title: 12345` titles the note "12345", not the file name."""
    note = markdown.parse(f"---\ntitle: {value}\n---\nbody")
    assert markdown.choose_title(None, note, "file.md") == title


@pytest.mark.parametrize(
    ("value", "title"),
    [
        ("1:1", "1:1"),
        ("yes", "yes"),
        ("NO", "NO"),
        ("02134", "02134"),
        ("1_000", "1_000"),
        ("3.10", "3.10"),
        ("1e3", "1e3"),
        ("2024-01-02 10:11", "2024-01-02 10:11"),
        ("0000-01-01", "0000-01-01"),
    ],
)
def test_frontmatter_scalars_are_read_as_editors_write_them(value: str, title: str) -> None:
    """YAML 1.1 read `1:1` as 61 (base 60), `3.10` as 3.1, `yes`, `no` and `on` as booleans
    (dropped as tags) and `02134` as an octal number: a one-on-one note tagged `1:1` is
    tagged `1:1`, a note on Python 3.10 `3.10`."""
    note = markdown.parse(f"---\ntitle: {value}\ntags: [{value}, on, 7, true]\n---\nbody")
    assert markdown.choose_title(None, note, "file.md") == title
    assert markdown.frontmatter_tags(note.metadata) == [title, "on", "7"]


def test_a_title_taken_from_the_note_is_one_line_without_control_characters() -> None:
    """A frontmatter title of two lines, or a file name or heading holding a terminal escape,
    titles the note on one line (an export's `# title` heading stays one heading)."""
    note = markdown.parse('---\ntitle: "Two\\nlines\\e[2J"\n---\n# Head\x1b[31m\n')
    assert markdown.choose_title(None, note, None) == "Two lines[2J"
    bare = markdown.parse("# Head\x1b[31m ing\n")
    assert markdown.choose_title(None, bare, "a\x1b]0;x\x07.md") == "a]0;x"
    assert markdown.choose_title(None, bare, None) == "Head[31m ing"
    assert markdown.choose_title("As\nasked", bare, None) == "As\nasked"  # the client's own


@pytest.mark.parametrize("value", ["[a, b]", "{a: 1}", "null", "''"])
def test_a_frontmatter_title_that_is_no_scalar_text_is_ignored(value: str) -> None:
    """A list, map, null or blank title falls back to the file name."""
    note = markdown.parse(f"---\ntitle: {value}\n---\nbody")
    assert markdown.choose_title(None, note, "file.md") == "file"


def test_a_frontmatter_block_over_the_limit_stays_text_unread() -> None:
    """200,000 keys took the YAML reader 10 s, on the API's event loop: a block over
    FRONTMATTER_MAX_CHARS is not read as YAML at all, and is kept as the note's text."""
    block = "".join(f"k{n}: v\n" for n in range(200_000))
    assert len(block) > markdown.FRONTMATTER_MAX_CHARS
    raw = f"---\ntitle: Big\n{block}---\n# Body\n"
    note = markdown.parse(raw)
    assert note.metadata == {} and note.text == raw
    fits = markdown.parse("---\ntitle: Small\n" + block[: block.index("k100:")] + "---\n# Body\n")
    assert fits.metadata["title"] == "Small" and fits.text == "# Body"


def test_frontmatter_is_read_by_libyaml() -> None:
    """The pure-Python YAML reader spent about a second of the API's event loop on a
    64 KB block (a deep flow collection); libyaml reads or refuses it in milliseconds. The
    locked PyYAML wheel carries libyaml, and the reader must use it."""
    assert yaml.__with_libyaml__
    assert markdown._SafeLoader is yaml.CSafeLoader
    deep = "x: " + "[" * 30_000 + "]" * 30_000
    assert markdown.parse(f"---\ntitle: Deep\n{deep}\n---\nbody").metadata == {}


@pytest.mark.parametrize(
    ("text", "heading"),
    [
        ("intro\n\n## Queues ##\nbody", "Queues"),
        ("# C#\n", "C#"),
        ("#\nNot a heading\n# Real", "Real"),
        ("# x" + " " * 5_000 + "y", "x" + " " * 5_000 + "y"),
        ("# x" + " " * 5_000 + "#" * 5_000 + " " * 5_000, "x"),
    ],
)
def test_the_first_heading_is_found_in_linear_time(text: str, heading: str) -> None:
    """A note titled by its heading: a line of 5,000 spaces took the heading pattern 155 s
    (cubic backtracking) on the API's event loop, for a 5 KB request."""
    started = time.process_time()
    assert markdown.first_heading(text) == heading
    assert time.process_time() - started < 5


@pytest.mark.parametrize(
    ("text", "heading"),
    [
        (
            "Setup.\n\n```bash\n# install the tools\npip install menos\n```\n\n# Deploying",
            "Deploying",
        ),
        ("~~~~\n# comment\n~~~\n# still code\n~~~~\n## Real", "Real"),
        ("```python\n# never closed\n", None),
        ("``inline`` code\n# Title", "Title"),
        ("Steps:\n\n- ```sh\n  # install\n  make\n  ```\n\n# Setup", "Setup"),
        ("1. ```\n   # one\n   ```\n2.  ~~~\n    # two\n    ~~~\n## Done", "Done"),
        ("- ```sh\n  # never closed\n", None),
        ("-```\n# Title", "Title"),
    ],
)
def test_a_comment_in_fenced_code_is_no_heading(text: str, heading: str | None) -> None:
    """A note whose code block opens with a shell or Python comment is titled by its first
    real heading, not by the comment."""
    assert markdown.first_heading(text) == heading


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ("    # install deps\n    pip install menos\n\n# Setup guide\n\nText.", "Setup guide"),
        ("\n\n    # code\n\n# Real", "Real"),
        ("---\ntags: [a]\n---\n    # code\n\n# Real", "Real"),
        ("\t# a tab indents code too\n\n# Real", "Real"),
        ("    code\n===\n\n# Real", "Real"),
    ],
)
def test_a_comment_in_indented_code_opening_a_note_is_no_title(raw: str, title: str) -> None:
    """A note opening with indented code (a shell comment) is titled by its first real
    heading, as first_heading judges it: parsing the note keeps its first line's indentation."""
    assert markdown.choose_title(None, markdown.parse(raw), None) == title


@pytest.mark.parametrize(
    ("text", "heading"),
    [
        ("My Title\n========\n\ntext", "My Title"),
        ("Intro text\nand more\n---\n", "Intro text and more"),  # a paragraph's lines
        ("  Indented\n  ---", "Indented"),
        ("Foo\n===\n# Later", "Foo"),  # the first heading, of either kind
        ("# First\nFoo\n===", "First"),
        ("***\nFoo\n---", "Foo"),  # a thematic break ends the paragraph above
        ("text\n\n---\n\n# Real", "Real"),  # after a blank line: a thematic break
        ("- item\n---\n# Real", "Real"),  # under a list item: a thematic break
        # a list item or quote interrupts the paragraph: the underline is in that block
        ("Intro\n- item\n---\n# Real", "Real"),
        ("Intro\n1) item\n===\n", None),
        ("Intro\n> quoted\n===\n", None),
        ("Intro\n<!-- note -->\n---\n", None),
        ("Intro\n2. not a list\n===\n", "Intro 2. not a list"),  # only 1 interrupts
        ("Intro\n-\n===\n", "Intro"),  # an empty item interrupts nothing: an underline
        ("1. item\n===\n", None),
        ("> quoted\n---\n", None),
        ("    code\n===\n", None),
        ("<div>\n===\n", None),
        ("```\nFoo\n===\n```\nBar\n-", "Bar"),  # in fenced code: not read
        ("=\n", None),
        ("x" * 70_000 + "\nLate\n===\n# Later", "Later"),  # past the first 64 KiB
        # frontmatter kept as text (here for its NUL) is not a heading underlined by `---`
        ('---\ntitle: "a\\0b"\n---\n# Heading\n', "Heading"),
        ("\n---\nkey: *alias\n---\nBody\n===\n", "Body"),
    ],
)
def test_an_underlined_heading_titles_a_note(text: str, heading: str | None) -> None:
    """A setext heading (a paragraph underlined with `=` or `-`) is a heading too: a note
    starting with one had no title."""
    assert markdown.first_heading(text) == heading


def test_only_a_notes_first_64_kib_are_judged_for_underlines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every line of `-` is an underline whose paragraph above must be judged, a Python step
    each: a 5 MB note of them held the API's event loop for over 2 s. Only the underlines in
    a note's first UNDERLINES_WITHIN characters are judged."""
    judged: list[str] = []
    judge = markdown._paragraph_above
    monkeypatch.setattr(
        markdown, "_paragraph_above", lambda text: judged.append(text) or judge(text)
    )
    assert markdown.first_heading("-\n" * 1_000_000 + "# End") == "End"
    assert 0 < len(judged) <= markdown.UNDERLINES_WITHIN // 2


@pytest.mark.parametrize(
    ("key", "name"), [("content", "content"), ("handler", "handler"), ("2024", "2024")]
)
def test_any_key_keeps_the_frontmatter(key: str, name: str) -> None:
    """A `content:` or `handler:` key, or one that YAML reads as a number, made the library
    refuse the whole block: title and tags were lost and the YAML became the note's text."""
    note = markdown.parse(f"---\ntitle: Hello\n{key}: draft\ntags: [a]\n---\n# Body\ntext")
    assert note == markdown.Note(
        metadata={"title": "Hello", name: "draft", "tags": ["a"]}, text="# Body\ntext"
    )
    assert markdown.choose_title(None, note, None) == "Hello"
