//! Output as Docker prints it: aligned tables, `--format` Go-template placeholders
//! (`{{.Field}}`, `{{.A.B}}`, `{{json .X}}`, `table ...`), sizes and ages.

use serde_json::Value;

/// Renders a `--format` template against `v`. Supports `{{.Path.To.Field}}`, `{{json .X}}`,
/// `{{json .}}` and `\t`/`\n` escapes — the forms scripts use.
pub fn template(tpl: &str, v: &Value) -> String {
    let tpl = tpl.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = tpl.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = rest[start + 2..start + end].trim();
        out.push_str(&eval(expr, v));
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

fn eval(expr: &str, v: &Value) -> String {
    let (json, path) = match expr.strip_prefix("json ") {
        Some(p) => (true, p.trim()),
        None => (false, expr),
    };
    let mut cur = v;
    for key in path.trim_start_matches('.').split('.').filter(|k| !k.is_empty()) {
        cur = match cur.get(key) {
            Some(x) => x,
            None => &Value::Null,
        };
    }
    if json {
        return cur.to_string();
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => "<no value>".into(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Value::Object(o) => format!(
            "map[{}]",
            o.iter()
                .map(|(k, x)| format!("{k}:{}", x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        x => x.to_string(),
    }
}

/// Prints rows with columns padded as Docker's tabwriter does (three spaces between).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Docker's human sizes: 1.98MB, 512B, 1.2GB (powers of 1000).
pub fn size(bytes: u64) -> String {
    engine_util::size::human(bytes)
}

pub fn ago(unix: i64) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let s = (now - unix).max(0);
    let h = match s {
        s if s < 1 => "Less than a second".to_string(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 172_800 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86_400),
    };
    format!("{h} ago")
}

pub fn short_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.chars().take(12).collect()
}

pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_templates_and_sizes() {
        let v = json!({ "State": { "ExitCode": 3, "Status": "exited" }, "Name": "/x", "Args": ["a", "b"] });
        assert_eq!(template("{{.State.ExitCode}} {{.Name}}", &v), "3 /x");
        assert_eq!(template("{{json .State}}", &v), r#"{"ExitCode":3,"Status":"exited"}"#);
        assert_eq!(template("{{.Args}}\\t{{.Missing}}", &v), "[a b]\t<no value>");
        assert_eq!(size(1_982_286), "1.98MB");
        assert_eq!(size(512), "512B");
        assert_eq!(table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]), "A     BB\nxxx   y\n");
    }
}
