//! JSON merge patches (RFC 7386): applying them and computing the patch between two documents.

use serde_json::{Map, Value};

/// Applies an RFC 7386 merge patch to `target`: `null` deletes a key, objects merge recursively,
/// anything else replaces.
pub fn apply(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let entry = target.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(existing) = entry {
                    apply(existing, inner);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// The merge patch that turns `from` into `to` (empty when they are equal). `to` must not contain
/// `null` values (see [`strip_nulls`]): a merge patch cannot express them.
pub fn diff(from: &Map<String, Value>, to: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for key in from.keys() {
        if !to.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, new) in to {
        match (from.get(key), new) {
            (Some(old), new) if old == new => {}
            (Some(Value::Object(old)), Value::Object(new)) => {
                patch.insert(key.clone(), Value::Object(diff(old, new)));
            }
            (_, new) => {
                patch.insert(key.clone(), new.clone());
            }
        }
    }
    patch
}

/// Removes `null` members recursively (a `null` in a full document means "absent").
pub fn strip_nulls(doc: &mut Map<String, Value>) {
    doc.retain(|_, v| !v.is_null());
    for v in doc.values_mut() {
        if let Value::Object(inner) = v {
            strip_nulls(inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn rfc7386_examples() {
        let mut t = obj(json!({"a":"b","c":{"d":"e","f":"g"}}));
        apply(&mut t, &obj(json!({"a":"z","c":{"f":null}})));
        assert_eq!(Value::Object(t), json!({"a":"z","c":{"d":"e"}}));
        let mut t = obj(json!({"a":[1]}));
        apply(&mut t, &obj(json!({"a":{"b":"c"}})));
        assert_eq!(Value::Object(t), json!({"a":{"b":"c"}}));
    }

    #[test]
    fn diff_is_minimal() {
        let from = obj(json!({"a":1,"b":{"c":1,"d":2},"e":3}));
        let to = obj(json!({"a":1,"b":{"c":1,"d":3},"f":4}));
        assert_eq!(Value::Object(diff(&from, &to)), json!({"b":{"d":3},"e":null,"f":4}));
        assert!(diff(&to, &to).is_empty());
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![Just(Value::Bool(true)), any::<i32>().prop_map(Value::from), "[a-c]{0,2}".prop_map(Value::from)]
    }

    fn doc() -> impl Strategy<Value = Map<String, Value>> {
        let value = leaf().prop_recursive(3, 16, 4, |inner| {
            prop::collection::btree_map("[a-d]", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect()))
        });
        prop::collection::btree_map("[a-e]", value, 0..5).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn applying_the_diff_reaches_the_target(from in doc(), to in doc()) {
            let mut to = to;
            strip_nulls(&mut to);
            let mut from = from;
            strip_nulls(&mut from);
            let patch = diff(&from, &to);
            let mut result = from.clone();
            apply(&mut result, &patch);
            prop_assert_eq!(result, to);
        }
    }
}
