//! A multi-app rollout plan (`cutover rollout --plan plan.yml`): apps, their manifests, and the
//! apps each one `depends_on`, put in an order where every app goes out after its dependencies.
//!
//! ```yaml
//! apps:
//!   - name: auth
//!     manifest: https://releases.example.com/auth-2.1.yml
//!   - name: shop
//!     manifest: https://releases.example.com/shop-1.4.2.yml
//!     depends_on: [auth]
//!     tag: [role=web]          # optional: only members with these tags (default: --tag)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("could not read plan {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("plan {path} is not valid: {source}")]
    Yaml {
        path: String,
        source: serde_norway::Error,
    },
    #[error("plan lists no apps: add at least one under `apps:`")]
    Empty,
    #[error("plan lists app {0} twice: each app goes out once per rollout")]
    Duplicate(String),
    #[error("app {app} depends on {missing}, which the plan does not list: add it or drop the dependency")]
    UnknownDependency { app: String, missing: String },
    #[error("dependency cycle between {0}: break it, an app cannot wait for itself")]
    Cycle(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub apps: Vec<PlannedApp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedApp {
    /// Name of the step; the app name the manifest deploys is read from the manifest itself.
    pub name: String,
    /// Manifest URL (or local path) handed to each node's `cutover apply`.
    pub manifest: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Member tag filters (`key=regexp`) for this app; empty: the rollout's `--tag`.
    #[serde(default)]
    pub tag: Vec<String>,
}

impl Plan {
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_norway::from_str(&text).map_err(|source| PlanError::Yaml {
            path: path.display().to_string(),
            source,
        })
    }

    /// The apps in rollout order: each one after everything it depends on, ties in plan order.
    pub fn order(&self) -> Result<Vec<PlannedApp>, PlanError> {
        if self.apps.is_empty() {
            return Err(PlanError::Empty);
        }
        let mut index = BTreeMap::new();
        for (i, app) in self.apps.iter().enumerate() {
            if index.insert(app.name.as_str(), i).is_some() {
                return Err(PlanError::Duplicate(app.name.clone()));
            }
        }
        for app in &self.apps {
            if let Some(missing) = app
                .depends_on
                .iter()
                .find(|d| !index.contains_key(d.as_str()))
            {
                return Err(PlanError::UnknownDependency {
                    app: app.name.clone(),
                    missing: missing.clone(),
                });
            }
        }
        // Kahn's algorithm, always taking the earliest ready app so the order is stable.
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::with_capacity(self.apps.len());
        while order.len() < self.apps.len() {
            let next = self.apps.iter().find(|a| {
                !done.contains(a.name.as_str())
                    && a.depends_on.iter().all(|d| done.contains(d.as_str()))
            });
            match next {
                Some(app) => {
                    done.insert(app.name.as_str());
                    order.push(app.clone());
                }
                None => {
                    let stuck: Vec<&str> = self
                        .apps
                        .iter()
                        .map(|a| a.name.as_str())
                        .filter(|n| !done.contains(n))
                        .collect();
                    return Err(PlanError::Cycle(stuck.join(", ")));
                }
            }
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> Plan {
        serde_norway::from_str(yaml).unwrap()
    }

    fn names(apps: &[PlannedApp]) -> Vec<&str> {
        apps.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn dependencies_go_first_and_ties_keep_plan_order() {
        let p = plan(
            "apps:
  - { name: shop, manifest: s.yml, depends_on: [auth, db] }
  - { name: mail, manifest: m.yml }
  - { name: auth, manifest: a.yml, depends_on: [db] }
  - { name: db, manifest: d.yml }",
        );
        assert_eq!(names(&p.order().unwrap()), ["mail", "db", "auth", "shop"]);
    }

    #[test]
    fn a_cycle_is_an_error_naming_its_apps() {
        let p = plan(
            "apps:
  - { name: a, manifest: a.yml, depends_on: [b] }
  - { name: b, manifest: b.yml, depends_on: [a] }
  - { name: c, manifest: c.yml }",
        );
        let err = p.order().unwrap_err().to_string();
        assert_eq!(
            err,
            "dependency cycle between a, b: break it, an app cannot wait for itself"
        );
    }

    #[test]
    fn unknown_dependencies_and_duplicates_are_errors() {
        let p = plan("apps:\n  - { name: a, manifest: a.yml, depends_on: [zz] }");
        assert!(matches!(
            p.order(),
            Err(PlanError::UnknownDependency { .. })
        ));
        let p = plan("apps:\n  - { name: a, manifest: a.yml }\n  - { name: a, manifest: b.yml }");
        assert!(matches!(p.order(), Err(PlanError::Duplicate(_))));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            serde_norway::from_str::<Plan>("apps:\n  - { name: a, manifest: a, depend_on: [b] }");
        assert!(err.is_err());
    }
}
