//! Dockerfiles as Docker's classic builder reads them: parser directives (`escape`), comments,
//! line continuations, instructions with their `--flags`, the JSON (exec) form, and the word
//! rules the instructions use: variable substitution (`$v`, `${v}`, `${v:-word}`,
//! `${v:+word}`), `key=value` pairs with quotes, and `.dockerignore` patterns.
//!
//! Owns: reading the text. It must never run anything: what an instruction does is the
//! builder's.

use std::collections::BTreeMap;

/// A Dockerfile that cannot be read, with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile parse error line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError { line, message: message.into() })
}

/// The instructions of Docker's reference.
pub const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// One instruction: its keyword (upper case), its `--name=value` flags, and its arguments as
/// written (continuations joined), or as a JSON array when written so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The line it starts on (1-based).
    pub line: usize,
    pub keyword: String,
    pub flags: BTreeMap<String, String>,
    /// The arguments after the flags, as written.
    pub rest: String,
    /// The arguments when they are a JSON array of strings (the exec form).
    pub json: Option<Vec<String>>,
    /// The whole instruction as written (continuations joined), for `Step n/m : …`.
    pub original: String,
}

/// The keywords whose arguments may be a JSON array.
const JSON_FORMS: &[&str] = &["RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "SHELL", "VOLUME"];
/// The keywords that take `--flags`.
const FLAGGED: &[&str] = &["FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"];

/// Parses a Dockerfile. The escape character comes from an `# escape=` directive (default `\`).
pub fn parse(text: &str) -> Result<Vec<Instruction>, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // parser directives: `# name=value` lines at the very top
    while i < lines.len() {
        let l = lines[i].trim();
        let Some(d) = l.strip_prefix('#') else { break };
        let Some((name, value)) = d.split_once('=') else { break };
        match name.trim().to_ascii_lowercase().as_str() {
            "escape" => {
                escape = match value.trim() {
                    "\\" => '\\',
                    "`" => '`',
                    other => return err(i + 1, format!("invalid ESCAPE '{other}'. Must be ` or \\")),
                }
            }
            "syntax" | "check" => {}
            _ => break,
        }
        i += 1;
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim_start();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        // join continuations; comment lines inside are dropped, as Docker does
        let mut text = String::new();
        let mut line = first.trim_end().to_string();
        loop {
            match line.strip_suffix(escape) {
                Some(body) if i < lines.len() => {
                    text.push_str(body);
                    // the next line that is not a comment or empty continues this one
                    loop {
                        if i >= lines.len() {
                            line = String::new();
                            break;
                        }
                        let next = lines[i].trim_start();
                        i += 1;
                        if next.starts_with('#') || next.trim().is_empty() {
                            continue;
                        }
                        line = next.trim_end().to_string();
                        break;
                    }
                }
                Some(body) => {
                    text.push_str(body);
                    break;
                }
                None => {
                    text.push_str(&line);
                    break;
                }
            }
        }
        out.push(instruction(start + 1, text.trim())?);
    }
    Ok(out)
}

fn instruction(line: usize, text: &str) -> Result<Instruction, ParseError> {
    let (word, rest) = match text.find(char::is_whitespace) {
        Some(p) => (&text[..p], text[p..].trim_start()),
        None => (text, ""),
    };
    let keyword = word.to_ascii_uppercase();
    if !INSTRUCTIONS.contains(&keyword.as_str()) {
        return err(line, format!("unknown instruction: {word}"));
    }
    let mut rest = rest.to_string();
    let mut flags = BTreeMap::new();
    if FLAGGED.contains(&keyword.as_str()) {
        while let Some(f) = rest.strip_prefix("--") {
            let end = f.find(char::is_whitespace).unwrap_or(f.len());
            let flag = &f[..end];
            let (name, value) = flag.split_once('=').unwrap_or((flag, "true"));
            flags.insert(name.to_string(), value.to_string());
            rest = f[end..].trim_start().to_string();
        }
    }
    let json = if JSON_FORMS.contains(&keyword.as_str()) || keyword == "HEALTHCHECK" {
        serde_json::from_str::<Vec<String>>(rest.trim()).ok()
    } else {
        None
    };
    if rest.is_empty() && !matches!(keyword.as_str(), "CMD" | "ENTRYPOINT" | "RUN") {
        return err(line, format!("{keyword} requires at least one argument"));
    }
    if keyword == "SHELL" && json.is_none() {
        return err(line, "SHELL requires the arguments to be in JSON form");
    }
    Ok(Instruction { line, keyword, flags, rest, json, original: text.to_string() })
}

/// Substitutes variables in `word` as Docker does: `$v`, `${v}`, `${v:-default}` and
/// `${v:+alternative}`; `\$` is a literal `$`; quotes are kept as written (the caller's rules
/// decide them). `lookup` gives a variable's value, `None` when unset.
pub fn substitute(word: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        if chars.get(i) == Some(&'{') {
            let close = chars[i..].iter().position(|&c| c == '}').ok_or_else(|| format!("missing '}}' in {word:?}"))?;
            let inner: String = chars[i + 1..i + close].iter().collect();
            i += close + 1;
            let (name, modifier) = match inner.find(':') {
                Some(p) => (&inner[..p], Some(&inner[p + 1..])),
                None => (inner.as_str(), None),
            };
            if !valid_name(name) {
                return Err(format!("bad substitution: {word:?}"));
            }
            let value = lookup(name);
            match modifier {
                None => out.push_str(&value.unwrap_or_default()),
                Some(m) if m.starts_with('-') => match value.filter(|v| !v.is_empty()) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&substitute(&m[1..], lookup)?),
                },
                Some(m) if m.starts_with('+') => {
                    if value.is_some_and(|v| !v.is_empty()) {
                        out.push_str(&substitute(&m[1..], lookup)?)
                    }
                }
                Some(m) => return Err(format!("unsupported modifier ({m}) in substitution")),
            }
        } else {
            let name: String = chars[i..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').collect();
            if name.is_empty() {
                out.push('$');
                continue;
            }
            i += name.chars().count();
            out.push_str(&lookup(&name).unwrap_or_default());
        }
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits `text` into words as Docker's shell-word rules: whitespace separates, quotes group
/// (and are removed), a backslash escapes the next character outside single quotes.
pub fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => match chars.next() {
                Some(n) if n == '"' || n == '\\' || n == '$' => cur.push(n),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unmatched quote in {text:?}"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// The `key=value` pairs of ENV, LABEL and ARG-like instructions, with Docker's legacy form
/// `ENV key value with spaces` when `legacy` and the first word has no `=`.
pub fn key_values(text: &str, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let first = text.split_whitespace().next().unwrap_or("");
    if legacy && !first.contains('=') {
        let value = text[first.len()..].trim();
        return Ok(vec![(first.to_string(), words(value)?.join(" "))]);
    }
    words(text)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("key-value pairs must be of the form key=value: {w:?}")),
        })
        .collect()
}

/// `.dockerignore`: patterns in order, the last one that matches a path decides (`!` patterns
/// keep it); a pattern that matches a directory matches everything in it.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for l in text.lines() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (keep, p) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let parts: Vec<String> = p
                .trim_start_matches('/')
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect();
            if !parts.is_empty() {
                patterns.push((keep, parts));
            }
        }
        Ignore { patterns }
    }

    /// Whether the context path `rel` (relative, `/`-separated) is left out.
    pub fn excludes(&self, rel: &str) -> bool {
        let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut excluded = false;
        for (keep, pattern) in &self.patterns {
            // the path or one of its parent directories matches
            let hit = (1..=parts.len()).any(|n| match_parts(pattern, &parts[..n]));
            if hit {
                excluded = !keep;
            }
        }
        excluded
    }
}

/// Whether the name `name` matches the glob `pattern` (one path component: `*`, `?`, `[…]`).
pub fn matches(pattern: &str, name: &str) -> bool {
    glob(pattern.as_bytes(), name.as_bytes())
}

fn match_parts(pattern: &[String], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => {
            match_parts(&pattern[1..], path) || (!path.is_empty() && match_parts(pattern, &path[1..]))
        }
        (Some(p), Some(c)) => glob(p.as_bytes(), c.as_bytes()) && match_parts(&pattern[1..], &path[1..]),
        _ => false,
    }
}

/// Go's `filepath.Match` for one path component: `*`, `?`, `[…]` (with `^`/`!` and ranges), `\`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|k| glob(&p[1..], &s[k..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else { return false };
            let Some(end) = p.iter().skip(1).position(|&b| b == b']').map(|e| e + 1) else { return false };
            let class = &p[1..end];
            let (negate, class) = match class.first() {
                Some(b'^' | b'!') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut k = 0;
            while k < class.len() {
                if k + 2 < class.len() && class[k + 1] == b'-' {
                    hit |= class[k] <= c && c <= class[k + 2];
                    k += 3;
                } else {
                    hit |= class[k] == c;
                    k += 1;
                }
            }
            hit != negate && glob(&p[end + 1..], &s[1..])
        }
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(&b) => s.first() == Some(&b) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_continuations_comments_and_directives() {
        let text = "# escape=`\n# a comment\nFROM busybox AS base\nRUN echo a `\n  # inside\n  && echo b\nCOPY --chown=1:2 --from=base [\"a b\", \"/c/\"]\ncmd [\"sh\"]\n";
        let got = parse(text).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!((got[0].keyword.as_str(), got[0].rest.as_str(), got[0].line), ("FROM", "busybox AS base", 3));
        assert_eq!(got[1].rest, "echo a && echo b");
        assert_eq!(got[2].flags["chown"], "1:2");
        assert_eq!(got[2].flags["from"], "base");
        assert_eq!(got[2].json.as_deref(), Some(&["a b".to_string(), "/c/".to_string()][..]));
        assert_eq!((got[3].keyword.as_str(), got[3].line), ("CMD", 8));
    }

    #[test]
    fn bad_dockerfiles_name_their_line() {
        let e = parse("FROM busybox\n\nBOGUS x\n").unwrap_err();
        assert_eq!(e.to_string(), "Dockerfile parse error line 3: unknown instruction: BOGUS");
        assert_eq!(parse("FROM a\nSHELL sh -c\n").unwrap_err().line, 2);
        assert_eq!(parse("FROM a\nWORKDIR\n").unwrap_err().line, 2);
    }

    #[test]
    fn substitution_is_dockers() {
        let vars = |n: &str| match n {
            "A" => Some("a".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let s = |w: &str| substitute(w, &vars).unwrap();
        assert_eq!(s("$A/${A}x"), "a/ax");
        assert_eq!(s("${NOPE:-d}|${EMPTY:-d}|${A:-d}"), "d|d|a");
        assert_eq!(s("${NOPE:+x}|${A:+x}|${A:+$A$A}"), "|x|aa");
        assert_eq!(s("\\$A $"), "$A $");
        assert!(substitute("${A", &vars).is_err());
    }

    #[test]
    fn words_and_pairs() {
        assert_eq!(words(r#"a "b c" 'd e' f\ g"#).unwrap(), ["a", "b c", "d e", "f g"]);
        assert_eq!(
            key_values(r#"A=1 B="two words" C=x\ y"#, true).unwrap(),
            [("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "x y".into())]
        );
        assert_eq!(key_values("PATH /a b", true).unwrap(), [("PATH".into(), "/a b".into())]);
        assert!(key_values("novalue", false).is_err());
    }

    #[test]
    fn dockerignore_patterns() {
        let i = Ignore::parse("# c\n*.log\n!keep.log\nbuild/\n**/tmp\ndocs/*.md\n!docs/README.md\n");
        assert!(i.excludes("x.log"));
        assert!(!i.excludes("keep.log"));
        assert!(i.excludes("build/out/a"));
        assert!(i.excludes("a/b/tmp/c") && i.excludes("tmp"));
        assert!(i.excludes("docs/x.md") && !i.excludes("docs/README.md"));
        assert!(!i.excludes("src/main.rs") && !i.excludes("sub/x.log"));
        assert!(Ignore::parse("[a-c]?.txt").excludes("bz.txt"));
    }
}
