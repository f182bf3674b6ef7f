//! `engine trace --pprof FILE`: a trace's time as a pprof profile (gzipped `profile.proto`, what
//! `go tool pprof` and Pyroscope read), from the same folded stacks as the flame graph
//! (`engine_telemetry::why::folded`): one sample per stack, its value in nanoseconds, labelled
//! with its span (`span`), where the time went (`state`: on-CPU, runqueue, blocked) and the
//! trace id. The messages are the few of pprof's `profile.proto` this needs, declared here.

use std::collections::HashMap;
use std::io::Write;

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
}

/// The string table: each string once, `""` first.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn id(&mut self, s: &str) -> i64 {
        if self.table.is_empty() {
            self.table.push(String::new());
            self.index.insert(String::new(), 0);
        }
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// The parts of a folded stack that say where a span's time went.
const STATES: [(&str, &str); 3] = [("[on-CPU]_[i]", "on-CPU"), ("[runqueue]", "runqueue"), ("[blocked]", "blocked")];

/// The profile of folded stacks (`frame;frame;… microseconds`) of trace `trace_id`, which
/// started at `start_ns` and lasted `duration_ns`.
pub fn profile(folded: &[String], trace_id: &str, start_ns: u64, duration_ns: u64) -> Profile {
    let mut strings = Strings::default();
    let mut functions: HashMap<String, u64> = HashMap::new();
    let mut p = Profile {
        sample_type: vec![ValueType { r#type: strings.id("time"), unit: strings.id("nanoseconds") }],
        time_nanos: start_ns as i64,
        duration_nanos: duration_ns as i64,
        ..Default::default()
    };
    let (k_span, k_state, k_trace) = (strings.id("span"), strings.id("state"), strings.id("trace_id"));
    let trace = strings.id(trace_id);
    for line in folded {
        let Some((stack, us)) = line.rsplit_once(' ') else { continue };
        let Ok(us) = us.parse::<i64>() else { continue };
        let frames: Vec<&str> = stack.split(';').collect();
        // the span is the last frame before the state; the state names the time
        let at = frames.iter().position(|f| STATES.iter().any(|(s, _)| s == f));
        let (span, state) = match at {
            Some(i) if i > 0 => (frames[i - 1], STATES.iter().find(|(s, _)| *s == frames[i]).map(|(_, n)| *n)),
            _ => (frames.last().copied().unwrap_or_default(), None),
        };
        let mut location_id = Vec::new();
        // pprof wants the leaf first
        for f in frames.iter().rev() {
            let name = f.trim_end_matches("_[k]").trim_end_matches("_[i]");
            let id = match functions.get(name) {
                Some(id) => *id,
                None => {
                    let id = functions.len() as u64 + 1;
                    let n = strings.id(name);
                    p.function.push(Function { id, name: n, system_name: n });
                    p.location.push(Location { id, line: vec![Line { function_id: id }] });
                    functions.insert(name.to_string(), id);
                    id
                }
            };
            location_id.push(id);
        }
        let mut label = vec![Label { key: k_span, str: strings.id(span) }, Label { key: k_trace, str: trace }];
        if let Some(state) = state {
            label.push(Label { key: k_state, str: strings.id(state) });
        }
        p.sample.push(Sample { location_id, value: vec![us * 1000], label });
    }
    p.string_table = strings.table;
    p
}

/// The profile as pprof files are: gzipped.
pub fn encode_gzip(p: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&p.encode_to_vec())?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_stacks_become_samples_with_their_span_and_state() {
        let folded = vec![
            "engine.run;runtime.create;[on-CPU]_[i] 1900".to_string(),
            "engine.run;runtime.create;runtime.cgroup.attach;[blocked];rcu_sync_enter_[k];synchronize_rcu_normal_[k] 9400"
                .to_string(),
        ];
        let p = profile(&folded, "abc", 1, 2);
        let bytes = encode_gzip(&p).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut raw).unwrap();
        let back = Profile::decode(&raw[..]).unwrap();
        assert_eq!(back, p);
        let s = |i: i64| back.string_table[i as usize].as_str();
        let name = |id: u64| s(back.function.iter().find(|f| f.id == id).unwrap().name);
        assert_eq!(s(0), "");
        assert_eq!((s(back.sample_type[0].r#type), s(back.sample_type[0].unit)), ("time", "nanoseconds"));
        let blocked = &back.sample[1];
        assert_eq!(blocked.value, [9_400_000]);
        // leaf first, annotations gone
        let frames: Vec<&str> = blocked.location_id.iter().map(|id| name(*id)).collect();
        assert_eq!(
            frames,
            [
                "synchronize_rcu_normal",
                "rcu_sync_enter",
                "[blocked]",
                "runtime.cgroup.attach",
                "runtime.create",
                "engine.run"
            ]
        );
        let labels: Vec<(&str, &str)> = blocked.label.iter().map(|l| (s(l.key), s(l.str))).collect();
        assert_eq!(labels, [("span", "runtime.cgroup.attach"), ("trace_id", "abc"), ("state", "blocked")]);
        // one function per name
        assert_eq!(back.function.len(), 7);
    }
}
