//! Serf's limit on a query's size: the query's name, its payload and the names of the nodes it
//! is filtered to must fit in 1 KiB together (Serf's `QuerySizeLimit`), or Serf refuses it. A
//! query for many nodes is therefore split into groups of names that fit.

/// Room for name, payload and node names in one query: 894 bytes were measured for a payload
/// alone (the rest of the 1 KiB is Serf's own encoding); this keeps a margin below that.
const QUERY_ROOM: usize = 800;

/// What one node name costs in a query beyond its bytes (its length prefix, with a margin).
const PER_NAME: usize = 3;

/// `nodes` in groups whose names, beside `name` and `payload`, fit in one query. An empty list
/// (every member) stays one group; a name too long to share a query goes alone.
pub fn groups(name: &str, payload: &str, nodes: &[String]) -> Vec<Vec<String>> {
    if nodes.is_empty() {
        return vec![Vec::new()];
    }
    let room = QUERY_ROOM.saturating_sub(name.len() + payload.len());
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut used = usize::MAX;
    for node in nodes {
        let cost = node.len() + PER_NAME;
        if used.saturating_add(cost) > room {
            groups.push(Vec::new());
            used = 0;
        }
        used += cost;
        groups
            .last_mut()
            .expect("a group was pushed")
            .push(node.clone());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, width: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:0width$}")).collect()
    }

    #[test]
    fn few_names_make_one_group_and_many_long_ones_are_split_in_order() {
        assert_eq!(groups("q", "", &[]), vec![Vec::<String>::new()]);
        assert_eq!(groups("cutover-status", "", &names(50, 3)).len(), 1);
        let long = names(100, 24);
        let split = groups("cutover-status", "", &long);
        assert!(split.len() > 1, "{}", split.len());
        assert_eq!(split.concat(), long, "every name once, in order");
        for group in &split {
            let size: usize = group.iter().map(|n| n.len() + PER_NAME).sum();
            assert!(size + "cutover-status".len() <= QUERY_ROOM, "{size}");
        }
        // A long payload leaves less room for names.
        let payload = "x".repeat(600);
        assert!(groups("cutover-deploy", &payload, &long).len() > split.len());
    }
}
