//! The scrubber: removes every trace of the secrets a check used from any text the runner
//! hands out (messages, body excerpts, hop URLs, error strings).
//!
//! A secret leaks in more shapes than its own bytes: a server may echo it percent-encoded
//! (from a query), base64-encoded (inside an `Authorization` header it reflects, or inside a
//! larger base64 blob), or JSON-escaped (in an echo body). So for every value given to the
//! builder, the scrubber searches for each of those forms, and replaces each match with
//! [`MASK`]. All forms go into one Aho-Corasick automaton, leftmost-longest, so one pass
//! covers them and an overlap never leaves part of the longer form behind.
//!
//! It must never keep a form of a secret in an error or `Debug` output: `Debug` shows only
//! how many patterns it holds.

use std::fmt;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
use zeroize::Zeroizing;

/// What every match is replaced with: the same mask the API shows for write-only fields.
pub const MASK: &str = "*****";

/// A base64 "core" (the characters of a secret's encoding at some offset inside a longer
/// stream) shorter than this is not searched: shorter runs match too much unrelated text.
pub const MIN_BASE64_CORE: usize = 8;

/// The set the runner percent-encodes substituted values with, in the URL path and query:
/// everything but RFC 3986 unreserved characters. Scrubbing searches this form too.
pub const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// WHATWG's path percent-encode set: what a server (or the `url` crate) leaves when it
/// re-serializes a path that held the value raw.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// WHATWG's query percent-encode set.
const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\'');

/// WHATWG's userinfo / component set, as JavaScript's `encodeURIComponent` leaves it.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Collects the secret values of one check; [`ScrubberBuilder::build`] turns them into a
/// [`Scrubber`]. The values are wiped when the builder is dropped.
#[derive(Default)]
pub struct ScrubberBuilder {
    values: Vec<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for ScrubberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScrubberBuilder({} values)", self.values.len())
    }
}

impl ScrubberBuilder {
    pub fn new() -> Self {
        ScrubberBuilder::default()
    }

    /// A secret value: scrubbed in every form. Empty values are ignored (they would match
    /// everywhere and hide nothing).
    pub fn secret(&mut self, value: &[u8]) -> &mut Self {
        if !value.is_empty() {
            self.values.push(Zeroizing::new(value.to_vec()));
        }
        self
    }

    /// HTTP Basic credentials: `user:pass`, its base64, and the whole `Basic …` value,
    /// besides the password itself. The username alone is public and stays readable.
    pub fn basic(&mut self, username: &[u8], password: &[u8]) -> &mut Self {
        self.secret(password);
        let pair = basic_pair(username, password);
        let encoded = Zeroizing::new(STANDARD.encode(&*pair).into_bytes());
        let mut header = Zeroizing::new(b"Basic ".to_vec());
        header.extend_from_slice(&encoded);
        self.secret(&pair).secret(&encoded).secret(&header)
    }

    /// A bearer token: the token and the whole `Bearer …` value.
    pub fn bearer(&mut self, token: &[u8]) -> &mut Self {
        let mut header = Zeroizing::new(b"Bearer ".to_vec());
        header.extend_from_slice(token);
        self.secret(token).secret(&header)
    }

    /// Adds every value `other` holds.
    pub fn extend(&mut self, other: &ScrubberBuilder) -> &mut Self {
        for value in &other.values {
            self.values.push(Zeroizing::new(value.to_vec()));
        }
        self
    }

    pub fn build(&self) -> Scrubber {
        let mut forms: Vec<Zeroizing<Vec<u8>>> = self
            .values
            .iter()
            .flat_map(|value| forms_of(value))
            .filter(|form| !form.is_empty())
            .collect();
        forms.sort_unstable_by(|a, b| a.as_slice().cmp(b.as_slice()));
        forms.dedup_by(|a, b| a.as_slice() == b.as_slice());
        let count = forms.len();
        let longest = forms.iter().map(|f| f.len()).max().unwrap_or(0);
        // Building fails only past the automaton's size limits, far beyond what the spec's
        // field limits allow; if it ever did, refuse to show anything rather than leak.
        let matcher = if forms.is_empty() {
            Matcher::Nothing
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(forms.iter().map(|f| f.as_slice()))
                .map_or(Matcher::Broken, Matcher::Forms)
        };
        Scrubber {
            matcher,
            count,
            longest,
        }
    }
}

/// `user:pass`, as Basic authentication sends it before encoding.
pub(crate) fn basic_pair(username: &[u8], password: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut pair = Zeroizing::new(Vec::with_capacity(username.len() + 1 + password.len()));
    pair.extend_from_slice(username);
    pair.push(b':');
    pair.extend_from_slice(password);
    pair
}

enum Matcher {
    /// No secrets: text passes unchanged.
    Nothing,
    Forms(AhoCorasick),
    /// The automaton could not be built: every text becomes the mask.
    Broken,
}

/// Replaces every form of every secret it was built with by [`MASK`].
pub struct Scrubber {
    matcher: Matcher,
    count: usize,
    /// The longest form, in bytes.
    longest: usize,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} forms)", self.count)
    }
}

impl Default for Scrubber {
    fn default() -> Self {
        ScrubberBuilder::new().build()
    }
}

impl Scrubber {
    pub fn builder() -> ScrubberBuilder {
        ScrubberBuilder::new()
    }

    /// `text` with every form of every secret replaced by [`MASK`].
    pub fn scrub(&self, text: &str) -> String {
        match &self.matcher {
            Matcher::Nothing => text.to_owned(),
            Matcher::Forms(ac) => {
                String::from_utf8_lossy(&mask_all(ac, text.as_bytes())).into_owned()
            }
            Matcher::Broken => MASK.to_owned(),
        }
    }

    /// Raw bytes (a response body) scrubbed, then read as UTF-8 (invalid sequences become
    /// U+FFFD). Scrubbing the bytes first also catches secrets that are not UTF-8.
    pub fn scrub_bytes(&self, bytes: &[u8]) -> String {
        match &self.matcher {
            Matcher::Nothing => String::from_utf8_lossy(bytes).into_owned(),
            Matcher::Forms(ac) => String::from_utf8_lossy(&mask_all(ac, bytes)).into_owned(),
            Matcher::Broken => MASK.to_owned(),
        }
    }

    /// The start of `bytes`, scrubbed and then cut to at most `max` bytes (at a character
    /// boundary). Only the prefix that can hold a match starting before `max` is scrubbed,
    /// so a large body costs no more than a small one; a secret that straddles the cut is
    /// masked whole before the cut is made.
    pub fn excerpt(&self, bytes: &[u8], max: usize) -> String {
        let window = &bytes[..bytes.len().min(max.saturating_add(self.longest))];
        let mut text = self.scrub_bytes(window);
        if text.len() > max {
            let mut cut = max;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        text
    }

    /// Whether `text` holds any form of any secret.
    pub fn finds_secret_in(&self, text: &str) -> bool {
        match &self.matcher {
            Matcher::Nothing => false,
            Matcher::Forms(ac) => ac.is_match(text.as_bytes()),
            Matcher::Broken => true,
        }
    }
}

/// `bytes` with every match replaced by [`MASK`].
fn mask_all(ac: &AhoCorasick, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    ac.replace_all_with_bytes(bytes, &mut out, |_, _, dst| {
        dst.extend_from_slice(MASK.as_bytes());
        true
    });
    out
}

/// Every form of `value` the scrubber searches for.
fn forms_of(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = vec![Zeroizing::new(value.to_vec())];
    forms.extend(percent_forms(value));
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(Zeroizing::new(engine.encode(value).into_bytes()));
    }
    forms.extend(base64_cores(value));
    if let Ok(text) = std::str::from_utf8(value) {
        forms.extend(json_forms(text));
        forms.extend(html_forms(text));
    }
    // Encoded twice, as a login page's `next=` parameter carries a URL that held the secret.
    let once = percent_encoding::percent_encode(value, NON_ALPHANUMERIC).to_string();
    let twice =
        Zeroizing::new(percent_encoding::utf8_percent_encode(&once, NON_ALPHANUMERIC).to_string());
    forms.push(Zeroizing::new(twice.as_bytes().to_vec()));
    forms.push(Zeroizing::new(lower_hex(&twice).into_bytes()));
    forms
}

/// HTML-escaped, as a page that reflects its input writes it: named entities, and `'` as
/// `&#39;` or `&#x27;`.
fn html_forms(text: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let escape = |apostrophe: &str| {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str(apostrophe),
                c => out.push(c),
            }
        }
        Zeroizing::new(out.into_bytes())
    };
    vec![escape("&#39;"), escape("&#x27;")]
}

/// Percent-encoded under each common encode set, with upper- and lower-case hex, and with
/// a space as `%20` or `+`.
fn percent_forms(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = Vec::new();
    let mut push = |encoded: String| {
        let encoded = Zeroizing::new(encoded);
        let plus = Zeroizing::new(encoded.replace("%20", "+"));
        for text in [&encoded, &plus] {
            forms.push(Zeroizing::new(text.as_bytes().to_vec()));
            forms.push(Zeroizing::new(lower_hex(text).into_bytes()));
        }
    };
    for set in [URL_VALUE, NON_ALPHANUMERIC, COMPONENT, PATH, QUERY] {
        push(percent_encoding::percent_encode(value, set).to_string());
    }
    // application/x-www-form-urlencoded (space as `+`, `*` kept), as HTML forms send it.
    push(url::form_urlencoded::byte_serialize(value).collect());
    if let Ok(text) = std::str::from_utf8(value) {
        push(utf8_percent_encode(text, URL_VALUE).to_string());
    }
    forms
}

/// `text` with the hex digits of each `%XX` escape in lower case.
fn lower_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut escape = 0;
    for c in text.chars() {
        if c == '%' {
            escape = 2;
            out.push(c);
        } else if escape > 0 {
            escape -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The characters of `value`'s base64 that do not depend on its neighbours, when it sits
/// at byte offset 0, 1 or 2 (mod 3) inside a longer base64-encoded stream; standard and
/// URL-safe alphabets. Only cores of at least [`MIN_BASE64_CORE`] characters.
fn base64_cores(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut cores = Vec::new();
    for offset in 0..3usize {
        let mut stream = Zeroizing::new(vec![0u8; offset]);
        stream.extend_from_slice(value);
        stream.extend_from_slice(&[0, 0, 0]);
        // Character i covers bits [6i, 6i + 6); keep those inside the value's bits.
        let first = (8 * offset).div_ceil(6);
        let end = 8 * (offset + value.len()) / 6;
        if end < first || end - first < MIN_BASE64_CORE {
            continue;
        }
        for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
            let encoded = Zeroizing::new(engine.encode(&*stream));
            if let Some(core) = encoded.as_bytes().get(first..end) {
                cores.push(Zeroizing::new(core.to_vec()));
            }
        }
    }
    cores
}

/// The value as it appears inside a JSON string: serde's escaping, the ASCII-only escaping
/// some servers use (`\u00e9`, surrogate pairs; lower- and upper-case hex), each also with
/// `/` escaped as `\/`.
fn json_forms(text: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = Vec::new();
    let serde_form = serde_json::to_string(text)
        .ok()
        .map(|quoted| Zeroizing::new(quoted[1..quoted.len() - 1].to_owned()));
    let ascii = Zeroizing::new(json_ascii(text));
    let ascii_upper = Zeroizing::new(upper_unicode_escapes(&ascii));
    for form in serde_form.iter().chain([&ascii, &ascii_upper]) {
        forms.push(Zeroizing::new(form.as_bytes().to_vec()));
        forms.push(Zeroizing::new(form.replace('/', "\\/").into_bytes()));
    }
    forms
}

/// JSON string escaping with every non-ASCII character as `\uXXXX` (lower-case hex), as
/// Python's `json.dumps` writes it by default.
fn json_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out
}

/// `\u00e9` → `\u00E9`.
fn upper_unicode_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at + 2]);
        let digits: String = rest[at + 2..].chars().take(4).collect();
        out.push_str(&digits.to_ascii_uppercase());
        rest = &rest[at + 2 + digits.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber(secrets: &[&str]) -> Scrubber {
        let mut b = Scrubber::builder();
        for s in secrets {
            b.secret(s.as_bytes());
        }
        b.build()
    }

    #[test]
    fn a_secret_in_plain_text_is_masked() {
        let s = scrubber(&["hunter2"]);
        assert_eq!(
            s.scrub("pw=hunter2; again hunter2"),
            "pw=*****; again *****"
        );
    }

    #[test]
    fn nothing_to_scrub_leaves_text_alone() {
        let s = Scrubber::default();
        assert_eq!(s.scrub("plain text"), "plain text");
        assert!(!s.finds_secret_in("plain text"));
        assert_eq!(scrubber(&[""]).scrub("abc"), "abc");
    }

    #[test]
    fn percent_encoded_forms_are_masked_in_either_hex_case_and_either_space() {
        let s = scrubber(&["a b/c?é"]);
        for form in [
            "a%20b%2Fc%3F%C3%A9",
            "a%20b%2fc%3f%c3%a9",
            "a+b%2Fc%3F%C3%A9",
            "a+b%2fc%3f%c3%a9",
            // Path and query sets leave `/` and `?` alone.
            "a%20b/c?%C3%A9",
            "a%20b/c%3F%C3%A9",
        ] {
            assert_eq!(s.scrub(&format!("<{form}>")), "<*****>", "{form}");
        }
    }

    #[test]
    fn base64_forms_are_masked_padded_or_not_in_both_alphabets() {
        let secret = "s3cr>t?~";
        let s = scrubber(&[secret]);
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            let form = engine.encode(secret);
            assert_eq!(s.scrub(&format!("[{form}]")), "[*****]", "{form}");
        }
    }

    #[test]
    fn a_secret_inside_a_longer_base64_stream_is_found_at_every_offset() {
        let secret = b"correct horse battery staple";
        let s = scrubber(&["correct horse battery staple"]);
        for prefix in ["", "x", "xy", "xyz", "{\"token\":\""] {
            let mut stream = prefix.as_bytes().to_vec();
            stream.extend_from_slice(secret);
            stream.extend_from_slice(b"\",\"more\":1}");
            for engine in [STANDARD, URL_SAFE_NO_PAD] {
                let encoded = engine.encode(&stream);
                let scrubbed = s.scrub(&encoded);
                assert!(scrubbed.contains(MASK), "{prefix:?}: {scrubbed}");
                // What is left of the stream no longer decodes to anything with the secret.
                for part in scrubbed.split(MASK) {
                    let decoded = engine
                        .decode(part.trim_end_matches('='))
                        .unwrap_or_default();
                    assert!(
                        !decoded
                            .windows(8)
                            .any(|w| secret.windows(8).any(|x| x == w)),
                        "{prefix:?}: {part}"
                    );
                }
            }
        }
    }

    #[test]
    fn json_escaped_forms_are_masked() {
        let secret = "p\"a\\s/s\né🔑";
        let s = scrubber(&[secret]);
        let serde = serde_json::to_string(secret).unwrap();
        assert_eq!(s.scrub(&format!("{{\"v\":{serde}}}")), "{\"v\":\"*****\"}");
        for form in [
            r#"p\"a\\s/s\n\u00e9\ud83d\udd11"#,
            r#"p\"a\\s/s\n\u00E9\uD83D\uDD11"#,
            r#"p\"a\\s\/s\n\u00e9\ud83d\udd11"#,
        ] {
            assert_eq!(s.scrub(&format!("\"{form}\"")), "\"*****\"", "{form}");
        }
    }

    #[test]
    fn basic_credentials_are_masked_as_pair_base64_and_header_but_the_username_stays() {
        let mut b = Scrubber::builder();
        b.basic(b"bot", b"pa:ss");
        let s = b.build();
        let b64 = STANDARD.encode("bot:pa:ss");
        assert_eq!(
            s.scrub(&format!("Authorization: Basic {b64}")),
            "Authorization: *****"
        );
        assert_eq!(s.scrub(&format!("seen {b64}")), "seen *****");
        assert_eq!(s.scrub("user bot:pa:ss"), "user *****");
        assert_eq!(s.scrub("user bot"), "user bot");
    }

    #[test]
    fn bearer_tokens_are_masked_with_their_prefix() {
        let mut b = Scrubber::builder();
        b.bearer(b"tok-123");
        let s = b.build();
        assert_eq!(
            s.scrub("Authorization: Bearer tok-123"),
            "Authorization: *****"
        );
    }

    #[test]
    fn the_longest_form_wins_so_no_tail_is_left() {
        // "Basic <b64>" and the bare password overlap; the whole header value goes.
        let mut b = Scrubber::builder();
        b.basic(b"u", b"p");
        let s = b.build();
        let header = format!("Basic {}", STANDARD.encode("u:p"));
        assert_eq!(s.scrub(&header), MASK);
    }

    #[test]
    fn non_utf8_secrets_are_scrubbed_from_bytes() {
        let mut b = Scrubber::builder();
        b.secret(&[0xff, 0xfe, b'k', b'e', b'y']);
        let s = b.build();
        assert_eq!(s.scrub_bytes(b"x\xff\xfekey y"), "x***** y");
    }

    #[test]
    fn an_excerpt_is_scrubbed_before_it_is_cut() {
        let s = scrubber(&["hunter2"]);
        // The secret straddles the cut: its head must not survive as "hunt".
        let body = format!("{}hunter2 and more", "x".repeat(10));
        let excerpt = s.excerpt(body.as_bytes(), 14);
        assert_eq!(excerpt, "xxxxxxxxxx****");
        // Cut on a character boundary, never inside one.
        assert_eq!(Scrubber::default().excerpt("ééé".as_bytes(), 3), "é");
        let long = "y".repeat(5000);
        assert_eq!(s.excerpt(long.as_bytes(), 1024).len(), 1024);
    }

    #[test]
    fn debug_shows_no_form() {
        let s = scrubber(&["hunter2"]);
        let shown = format!("{s:?} {:?}", Scrubber::builder().secret(b"hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn finds_secret_in_says_whether_any_form_is_present() {
        let s = scrubber(&["a/b"]);
        assert!(s.finds_secret_in("https://x.test/?next=a%2Fb"));
        assert!(!s.finds_secret_in("https://x.test/?next=a-b"));
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        /// Secrets from letters and the characters that encoders treat specially.
        fn secret() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    proptest::char::range('a', 'z'),
                    proptest::char::range('A', 'Z'),
                    proptest::char::range('0', '9'),
                    proptest::sample::select(vec![
                        '%', '+', '/', '=', '&', '"', '\\', ' ', '\n', '?', '#', ':', 'é', 'ß',
                        '日', '🔑', '\u{7f}', '\t',
                    ]),
                ],
                1..24,
            )
            .prop_map(|chars| chars.into_iter().collect())
        }

        /// Text around a form, from characters no form of these secrets contains.
        fn filler() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                proptest::sample::select(vec!['<', '>', '|', '!', ';', ',']),
                0..6,
            )
            .prop_map(|chars| chars.into_iter().collect())
        }

        /// `%XX` escapes with lower-case hex, written apart from the scrubber's own code.
        fn lower_escapes(text: &str) -> String {
            let bytes = text.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                out.push(bytes[i]);
                if bytes[i] == b'%' && i + 2 < bytes.len() {
                    out.push(bytes[i + 1].to_ascii_lowercase());
                    out.push(bytes[i + 2].to_ascii_lowercase());
                    i += 3;
                } else {
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        }

        /// Every form, written independently of the scrubber's own code.
        fn expected_forms(secret: &str) -> Vec<String> {
            let bytes = secret.as_bytes();
            let mut forms = vec![secret.to_owned()];
            let strict: String = bytes
                .iter()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                        (*b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let plus = strict.replace("%20", "+");
            forms.push(lower_escapes(&strict));
            forms.push(lower_escapes(&plus));
            forms.push(strict);
            forms.push(plus);
            for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
                forms.push(engine.encode(bytes));
            }
            let json = serde_json::to_string(secret).unwrap();
            forms.push(json[1..json.len() - 1].to_owned());
            forms
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn no_form_of_a_secret_survives_in_text_built_around_it(
                secret in secret(),
                before in filler(),
                after in filler(),
            ) {
                let mut b = Scrubber::builder();
                b.secret(secret.as_bytes());
                let s = b.build();
                let all: Vec<String> = expected_forms(&secret);
                for form in &all {
                    let text = format!("{before}{form}{after}");
                    let scrubbed = s.scrub(&text);
                    prop_assert!(!scrubbed.contains(form.as_str()), "{form:?} survived in {scrubbed:?}");
                }
                // All forms in one text, side by side.
                let text = all.join(&before);
                let scrubbed = s.scrub(&text);
                for form in &all {
                    prop_assert!(!scrubbed.contains(form.as_str()), "{form:?} survived in {scrubbed:?}");
                }
            }

            #[test]
            fn no_base64_core_survives_inside_a_longer_stream(
                secret in secret(),
                prefix in proptest::collection::vec(any::<u8>(), 0..3),
                suffix in proptest::collection::vec(any::<u8>(), 0..4),
            ) {
                let mut b = Scrubber::builder();
                b.secret(secret.as_bytes());
                let s = b.build();
                let mut stream = prefix.clone();
                stream.extend_from_slice(secret.as_bytes());
                stream.extend_from_slice(&suffix);
                for engine in [STANDARD, URL_SAFE_NO_PAD] {
                    let encoded = engine.encode(&stream);
                    // Characters wholly inside the secret's bits, counted independently.
                    let first = (prefix.len() * 8).div_ceil(6);
                    let end = (prefix.len() + secret.len()) * 8 / 6;
                    if end >= first + MIN_BASE64_CORE {
                        let core = &encoded[first..end];
                        let scrubbed = s.scrub(&encoded);
                        prop_assert!(!scrubbed.contains(core), "{core} survived in {scrubbed}");
                    }
                }
            }
        }
    }
}
