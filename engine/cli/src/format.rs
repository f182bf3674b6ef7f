//! Output as Docker prints it: aligned tables, `--format` Go templates (`{{.Field}}`,
//! `{{json .X}}`, `{{range}}`, `{{index}}`, `{{join}}`, ...; `table ...`), sizes and ages.

use std::collections::HashMap;

use serde_json::Value;

/// Renders a `--format` template against `v`, as the Docker CLI evaluates it. Field paths
/// (`{{.A.B}}`) and `{{json .X}}` print values as Go prints them; anything more (`range`, `if`,
/// `with`, `index`, `len`, `printf`, pipes, variables, and Docker's `join`, `split`, `lower`,
/// `upper`, `title`, `json` functions) goes through a Go text/template engine.
pub fn template(tpl: &str, v: &Value) -> String {
    let tpl = tpl.replace("\\t", "\t").replace("\\n", "\n");
    if needs_engine(&tpl) {
        return go_template(&tpl, v).unwrap_or_else(|e| format!("template: {e}"));
    }
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

/// Whether a template uses more than field paths and `json` (what [`eval`] does itself).
fn needs_engine(tpl: &str) -> bool {
    tpl.split("{{").skip(1).filter_map(|a| a.split_once("}}").map(|(expr, _)| expr.trim())).any(|expr| {
        let word = expr.split_whitespace().next().unwrap_or("");
        !(word.starts_with('.') || (word == "json" && expr.split_whitespace().count() == 2))
            || expr.contains(['|', '$', '('])
    })
}

/// `tpl` through gtmpl (Go's text/template), with Docker's template functions.
fn go_template(tpl: &str, v: &Value) -> Result<String, String> {
    let mut t = gtmpl::Template::default();
    t.add_func("json", |args| Ok(gtmpl::Value::String(to_json(arg(args, 0)?).to_string())));
    t.add_func("join", |args| {
        let sep = arg(args, 1)?.to_string();
        let gtmpl::Value::Array(items) = arg(args, 0)? else {
            return Ok(gtmpl::Value::String(arg(args, 0)?.to_string()));
        };
        Ok(gtmpl::Value::String(items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(&sep)))
    });
    t.add_func("split", |args| {
        let (s, sep) = (arg(args, 0)?.to_string(), arg(args, 1)?.to_string());
        Ok(gtmpl::Value::Array(s.split(sep.as_str()).map(|p| gtmpl::Value::String(p.to_string())).collect()))
    });
    t.add_func("lower", |args| Ok(gtmpl::Value::String(arg(args, 0)?.to_string().to_lowercase())));
    t.add_func("upper", |args| Ok(gtmpl::Value::String(arg(args, 0)?.to_string().to_uppercase())));
    t.add_func("title", |args| {
        let s = arg(args, 0)?.to_string();
        let mut c = s.chars();
        Ok(gtmpl::Value::String(c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()))
    });
    t.parse(tpl).map_err(|e| e.to_string())?;
    t.render(&gtmpl::Context::from(to_gtmpl(v))).map_err(|e| e.to_string())
}

fn arg(args: &[gtmpl::Value], i: usize) -> Result<&gtmpl::Value, gtmpl::FuncError> {
    args.get(i).ok_or(gtmpl::FuncError::AtLeastXArgs("this function".into(), i + 1))
}

fn to_gtmpl(v: &Value) -> gtmpl::Value {
    match v {
        Value::Null => gtmpl::Value::Nil,
        Value::Bool(b) => gtmpl::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => gtmpl::Value::from(i),
            (_, Some(u)) => gtmpl::Value::from(u),
            _ => gtmpl::Value::from(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => gtmpl::Value::String(s.clone()),
        Value::Array(a) => gtmpl::Value::Array(a.iter().map(to_gtmpl).collect()),
        Value::Object(o) => {
            gtmpl::Value::Map(o.iter().map(|(k, x)| (k.clone(), to_gtmpl(x))).collect::<HashMap<_, _>>())
        }
    }
}

fn to_json(v: &gtmpl::Value) -> Value {
    match v {
        gtmpl::Value::Nil | gtmpl::Value::NoValue => Value::Null,
        gtmpl::Value::Bool(b) => Value::Bool(*b),
        gtmpl::Value::String(s) => Value::String(s.clone()),
        gtmpl::Value::Number(n) => {
            serde_json::from_str(&n.to_string()).unwrap_or_else(|_| Value::String(n.to_string()))
        }
        gtmpl::Value::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        gtmpl::Value::Map(m) | gtmpl::Value::Object(m) => {
            Value::Object(m.iter().map(|(k, x)| (k.clone(), to_json(x))).collect())
        }
        other => Value::String(other.to_string()),
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
    fn renders_go_template_actions_as_the_docker_cli() {
        let v = json!({
            "NetworkSettings": { "Networks": { "bridge": { "IPAddress": "172.17.0.2" } } },
            "Config": { "Cmd": ["sleep", "100"], "Labels": { "team": "a" } },
            "State": { "Health": { "Log": [{ "ExitCode": 0, "Output": "fine" }, { "ExitCode": 1, "Output": "bad" }] } },
        });
        let cases = [
            ("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "172.17.0.2"),
            ("{{join .Config.Cmd \" \"}}", "sleep 100"),
            ("{{index .Config.Labels \"team\"}}", "a"),
            ("{{range .State.Health.Log}}{{.ExitCode}}:{{.Output}};{{end}}", "0:fine;1:bad;"),
            ("{{len .Config.Cmd}}", "2"),
            ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{end}}", "team=a"),
            ("{{if eq (len .Config.Cmd) 2}}two{{else}}other{{end}}", "two"),
            ("{{range .Config.Cmd}}{{json .}}{{end}}", "\"sleep\"\"100\""),
            ("{{upper (index .Config.Cmd 0)}}", "SLEEP"),
            ("{{json .Config.Labels}}", r#"{"team":"a"}"#),
        ];
        for (tpl, want) in cases {
            assert_eq!(template(tpl, &v), want, "{tpl}");
        }
        assert!(template("{{range .X}", &v).starts_with("{{range"), "an unclosed action is text");
        assert!(template("{{range .Config.Cmd}}", &v).starts_with("template: "), "a range without end");
    }

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
