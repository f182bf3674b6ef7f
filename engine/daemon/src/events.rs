//! The event service behind `GET /events`: container and network events in Docker's shape,
//! published to every listener and kept (the last [`KEPT`]) for `since` replays.
//!
//! Owns: the event stream. It must never block a publisher (a slow listener lags and skips) or
//! know about containers beyond the facts an event carries.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

/// How many past events are kept for `since`.
pub const KEPT: usize = 1024;

/// What an event is about (`Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Container,
    Network,
    Image,
}

/// One event, serialised as dockerd writes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: Kind,
    #[serde(rename = "Action")]
    pub action: String,
    /// Legacy fields of container events (`status`, `id`, `from`), which older clients read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: &'static str,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    fn new(kind: Kind, action: &str, actor_id: &str, attributes: BTreeMap<String, String>) -> Event {
        let time_nano = engine_util::time::unix_nanos(SystemTime::now());
        Event {
            kind,
            action: action.to_string(),
            status: None,
            id: None,
            from: None,
            actor: Actor { id: actor_id.to_string(), attributes },
            scope: "local",
            time: time_nano / 1_000_000_000,
            time_nano,
        }
    }

    /// A container event: its name, image and labels as attributes, then `extra`.
    pub fn container(
        id: &str,
        name: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
        action: &str,
        extra: &[(&str, String)],
    ) -> Event {
        let mut attributes = labels.clone();
        attributes.insert("name".into(), name.to_string());
        attributes.insert("image".into(), image.to_string());
        attributes.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let mut ev = Event::new(Kind::Container, action, id, attributes);
        ev.status = Some(action.to_string());
        ev.id = Some(id.to_string());
        ev.from = Some(image.to_string());
        ev
    }

    /// A network event (`container` named for connect and disconnect).
    pub fn network(id: &str, name: &str, driver: &str, action: &str, container: Option<&str>) -> Event {
        let mut attributes = BTreeMap::from([("name".to_string(), name.to_string()), ("type".into(), driver.into())]);
        if let Some(c) = container {
            attributes.insert("container".into(), c.to_string());
        }
        Event::new(Kind::Network, action, id, attributes)
    }
}

impl Event {
    /// An image event (`pull`, `push`): the reference is its id and its name, as dockerd's.
    pub fn image(action: &str, reference: &str) -> Event {
        let attributes = BTreeMap::from([("name".to_string(), reference.to_string())]);
        let mut ev = Event::new(Kind::Image, action, reference, attributes);
        ev.status = Some(action.to_string());
        ev.id = Some(reference.to_string());
        ev
    }
}

/// Which events a listener wants (`filters` of `GET /events`): each list empty means any.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub kinds: Vec<String>,
    pub actions: Vec<String>,
    /// Container ids (or prefixes) and names.
    pub containers: Vec<String>,
}

impl Filter {
    pub fn matches(&self, ev: &Event) -> bool {
        let kind = match ev.kind {
            Kind::Container => "container",
            Kind::Network => "network",
            Kind::Image => "image",
        };
        let name = ev.actor.attributes.get("name").map(String::as_str).unwrap_or_default();
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && (self.actions.is_empty() || self.actions.contains(&ev.action))
            && (self.containers.is_empty()
                || self.containers.iter().any(|c| ev.actor.id.starts_with(c.as_str()) || c == name))
    }
}

/// The event stream: published to every listener, the last [`KEPT`] kept for replays.
pub struct Events {
    tx: broadcast::Sender<Event>,
    recent: Mutex<VecDeque<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Events { tx: broadcast::channel(256).0, recent: Mutex::new(VecDeque::with_capacity(KEPT)) }
    }
}

impl Events {
    pub fn publish(&self, ev: Event) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= KEPT {
            recent.pop_front();
        }
        recent.push_back(ev.clone());
        // sent under the lock: a subscriber sees each event once, replayed or live
        let _ = self.tx.send(ev);
    }

    /// The kept events at or after `since` (Unix nanoseconds; none without it) and a receiver of
    /// every event published after them: nothing is missed or seen twice between the two.
    pub fn subscribe(&self, since: Option<i64>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let replay = match since {
            Some(s) => recent.iter().filter(|e| e.time_nano >= s).cloned().collect(),
            None => Vec::new(),
        };
        (replay, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_written_as_dockerd_writes_them() {
        let labels = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let ev = Event::container("abc", "web", "busybox", &labels, "die", &[("exitCode", "3".into())]);
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["Type"], "container");
        assert_eq!(
            (v["Action"].as_str(), v["status"].as_str(), v["id"].as_str()),
            (Some("die"), Some("die"), Some("abc"))
        );
        assert_eq!(v["from"], "busybox");
        assert_eq!(
            v["Actor"],
            serde_json::json!({"ID": "abc", "Attributes": {"name": "web", "image": "busybox", "team": "a", "exitCode": "3"}})
        );
        assert_eq!(v["scope"], "local");
        assert_eq!(v["time"].as_i64().unwrap(), v["timeNano"].as_i64().unwrap() / 1_000_000_000);
        let v = serde_json::to_value(Event::network("n1", "front", "bridge", "connect", Some("abc"))).unwrap();
        assert_eq!(v["Type"], "network");
        assert!(v.get("status").is_none() && v.get("from").is_none());
        assert_eq!(v["Actor"]["Attributes"]["container"], "abc");
    }

    #[test]
    fn replays_since_and_streams_what_follows_once() {
        let events = Events::default();
        let none = BTreeMap::new();
        events.publish(Event::container("c1", "one", "bb", &none, "create", &[]));
        let cut = events.subscribe(None).0.len();
        assert_eq!(cut, 0, "no replay without since");
        let (replay, mut rx) = events.subscribe(Some(0));
        assert_eq!(replay.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["create"]);
        events.publish(Event::container("c1", "one", "bb", &none, "start", &[]));
        assert_eq!(rx.try_recv().unwrap().action, "start");
        assert!(rx.try_recv().is_err(), "each event once");
        let (replay, _) = events.subscribe(Some(i64::MAX));
        assert!(replay.is_empty());
        for i in 0..KEPT + 10 {
            events.publish(Event::network("n", "x", "bridge", &format!("a{i}"), None));
        }
        assert_eq!(events.subscribe(Some(0)).0.len(), KEPT, "only the last are kept");
    }

    #[test]
    fn filters_by_type_action_and_container() {
        let none = BTreeMap::new();
        let ev = Event::container("abcdef", "web", "bb", &none, "start", &[]);
        assert!(Filter::default().matches(&ev));
        let f = |k: &[&str], a: &[&str], c: &[&str]| Filter {
            kinds: k.iter().map(|s| s.to_string()).collect(),
            actions: a.iter().map(|s| s.to_string()).collect(),
            containers: c.iter().map(|s| s.to_string()).collect(),
        };
        assert!(f(&["container"], &["start"], &["abc"]).matches(&ev));
        assert!(f(&[], &[], &["web"]).matches(&ev));
        assert!(!f(&["network"], &[], &[]).matches(&ev));
        assert!(!f(&[], &["die"], &[]).matches(&ev));
        assert!(!f(&[], &[], &["other"]).matches(&ev));
    }
}
