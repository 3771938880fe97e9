//! The start guard: an operator whose store is empty makes a new root key, which is right
//! for a new installation and a disaster for one whose store was lost: the new key opens
//! nothing stored before, and every VaultSection would publish a new sealing key. So before
//! the first root key is made, the watched namespaces are searched for evidence of an
//! earlier store (items stored under a key version, sections publishing a sealing key), and
//! the operator refuses to start if it finds any, pointing at `monivault restore`.
//!
//! What it must never do: make or change anything; it only reads.

use std::future::Future;

use kube::api::{Api, ListParams, ObjectList};
use kube::{Client, ResourceExt};

use crate::api::condition::{READY, find_condition};
use crate::api::vault_item::VaultItem;
use crate::api::vault_section::VaultSection;
use crate::store::{Store, StoreError};

/// Objects read per request. Every page is read until one piece of evidence is found.
const PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum FreshStartError {
    #[error(
        "the store in namespace {namespace} {state}, but {evidence}: the store was lost, and new keys would open none of it. Restore it: `monivault restore --namespace {namespace} --recovery-private-key NAME.private < backup.mvb`. To start over with new keys on purpose (every stored secret, and every value sealed for the old keys, stays unreadable), start with --allow-new-root-key"
    )]
    StoreLost {
        namespace: String,
        state: &'static str,
        evidence: String,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot look for vault objects an earlier store left: {0}")]
    Kube(#[source] kube::Error),
}

/// Refuses when `store` has no keyring (the root key may survive or not) while the
/// cluster holds objects an earlier store made: the next start would make a new, empty
/// keyring (and, without a root key, a new root key), and open none of them. A store with
/// a keyring head is left to [`crate::store::Keys::bootstrap`], which has its own
/// refusals for a half-present store (a head without a root key, among others).
pub async fn refuse_if_store_lost<S: Store>(
    client: &Client,
    store: &S,
    store_namespace: &str,
    watch_namespace: Option<&str>,
) -> Result<(), FreshStartError> {
    let has_head = store.keyring_head().await?.is_some();
    let has_root_key = store.root_keys().await?.is_some();
    let Some(state) = keyring_missing(has_root_key, has_head) else {
        return Ok(());
    };
    if let Some(evidence) = earlier_store_evidence(client, watch_namespace).await? {
        return Err(FreshStartError::StoreLost {
            namespace: store_namespace.to_owned(),
            state,
            evidence,
        });
    }
    Ok(())
}

/// How the store looks when the cluster must be searched: whenever the keyring head is
/// missing, since the next start would make a new, empty keyring, whether or not the root
/// key survived (as [`crate::store::Keys::bootstrap`] refuses a missing head over
/// environments or records in the store, this refuses one over evidence in the cluster).
/// `None` when the head exists.
fn keyring_missing(has_root_key: bool, has_keyring_head: bool) -> Option<&'static str> {
    match (has_root_key, has_keyring_head) {
        (_, true) => None,
        (true, false) => Some(
            "has lost its keyring (the root key Secret is there, the keyring Secret monivault-keyring is not)",
        ),
        (false, false) => Some("is empty (no root key, no keyring)"),
    }
}

/// One page of a list: its objects and the token of the next page, if there is one.
pub struct Page<K> {
    pub items: Vec<K>,
    pub next: Option<String>,
}

impl<K> From<ObjectList<K>> for Page<K>
where
    K: Clone,
{
    fn from(list: ObjectList<K>) -> Self {
        Page {
            next: list.metadata.continue_.filter(|t| !t.is_empty()),
            items: list.items,
        }
    }
}

/// Reads page after page from `fetch` (given the previous page's continue token) until
/// `evidence` describes an object, or the last page is read.
pub async fn first_evidence<K, F, Fut>(
    mut fetch: F,
    evidence: impl Fn(&K) -> Option<String>,
) -> Result<Option<String>, FreshStartError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<Page<K>, FreshStartError>>,
{
    let mut token = None;
    loop {
        let page = fetch(token.take()).await?;
        if let Some(found) = page.items.iter().find_map(&evidence) {
            return Ok(Some(found));
        }
        match page.next {
            Some(next) => token = Some(next),
            None => return Ok(None),
        }
    }
}

/// Lists every page of `api`, stopping at the first object `evidence` describes.
async fn search<K>(
    api: &Api<K>,
    evidence: impl Fn(&K) -> Option<String>,
) -> Result<Option<String>, FreshStartError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    first_evidence(
        |token: Option<String>| async move {
            let mut params = ListParams::default().limit(PAGE);
            if let Some(token) = &token {
                params = params.continue_token(token);
            }
            api.list(&params)
                .await
                .map(Page::from)
                .map_err(FreshStartError::Kube)
        },
        evidence,
    )
    .await
}

/// An item stored under a key version, described in words.
pub fn item_evidence(item: &VaultItem) -> Option<String> {
    let status = item.status.as_ref()?;
    let ready = find_condition(&status.conditions, READY).is_some_and(|c| c.status == "True");
    // A key version, or a Ready item, only comes from a store.
    let version = status
        .key_version
        .filter(|_| ready || status.secret.is_some())?;
    Some(format!(
        "VaultItem {}/{} is stored under data key version {version}",
        item.namespace().unwrap_or_default(),
        item.name_any()
    ))
}

/// A section publishing a sealing key, described in words.
pub fn section_evidence(section: &VaultSection) -> Option<String> {
    section
        .status
        .as_ref()
        .is_some_and(|s| s.sealing_public_key.is_some())
        .then(|| {
            format!(
                "VaultSection {}/{} publishes a sealing key",
                section.namespace().unwrap_or_default(),
                section.name_any()
            )
        })
}

/// The first VaultItem stored under a key version, or VaultSection publishing a sealing
/// key, in the watched namespaces (every namespace when unscoped), described in words.
pub async fn earlier_store_evidence(
    client: &Client,
    watch_namespace: Option<&str>,
) -> Result<Option<String>, FreshStartError> {
    let items: Api<VaultItem> = match watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Some(found) = search(&items, item_evidence).await? {
        return Ok(Some(found));
    }
    let sections: Api<VaultSection> = match watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    search(&sections, section_evidence).await
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::api::vault_section::{VaultSectionSpec, VaultSectionStatus};

    fn section(name: &str, publishes: bool) -> VaultSection {
        let mut section = VaultSection::new(name, VaultSectionSpec::default());
        section.metadata.namespace = Some("shop".into());
        section.status = Some(VaultSectionStatus {
            key_version: publishes.then_some(1),
            sealing_public_key: publishes.then(|| "mvpk1.shop.1.AAAA".into()),
            ..VaultSectionStatus::default()
        });
        section
    }

    /// `pages` pages of 100 decoys each, then one page with the evidence last.
    fn pages(decoy_pages: usize) -> Vec<Vec<VaultSection>> {
        let mut pages: Vec<Vec<VaultSection>> = (0..decoy_pages)
            .map(|p| {
                (0..100)
                    .map(|i| section(&format!("decoy-{p}-{i}"), false))
                    .collect()
            })
            .collect();
        pages.push(vec![section("a-decoy", false), section("real", true)]);
        pages
    }

    async fn run(pages: &[Vec<VaultSection>]) -> (Option<String>, Vec<Option<String>>) {
        let asked = RefCell::new(Vec::new());
        let found = first_evidence(
            |token: Option<String>| {
                asked.borrow_mut().push(token.clone());
                let index: usize = token.map_or(0, |t| t.parse().expect("token"));
                let items = pages[index].clone();
                let next = (index + 1 < pages.len()).then(|| (index + 1).to_string());
                async move { Ok(Page { items, next }) }
            },
            section_evidence,
        )
        .await
        .expect("search");
        (found, asked.into_inner())
    }

    #[test]
    fn the_cluster_is_searched_whenever_the_keyring_head_is_missing() {
        assert!(keyring_missing(false, false).is_some_and(|s| s.contains("empty")));
        // The root key survived, the keyring did not: a new keyring would open nothing.
        assert!(keyring_missing(true, false).is_some_and(|s| s.contains("lost its keyring")));
        // With a head, bootstrap's own refusals apply (a head without a root key).
        assert_eq!(keyring_missing(true, true), None);
        assert_eq!(keyring_missing(false, true), None);
    }

    #[tokio::test]
    async fn evidence_behind_a_hundred_decoys_is_found_on_a_later_page() {
        let (found, asked) = run(&pages(3)).await;
        assert_eq!(
            found.as_deref(),
            Some("VaultSection shop/real publishes a sealing key")
        );
        assert_eq!(
            asked,
            [None, Some("1".into()), Some("2".into()), Some("3".into())]
        );
    }

    #[tokio::test]
    async fn the_search_stops_at_the_first_evidence_and_ends_at_the_last_page() {
        let mut stops = pages(1);
        stops.push(vec![section("after", true)]);
        let (found, asked) = run(&stops).await;
        assert!(found.is_some_and(|f| f.contains("shop/real")));
        assert_eq!(asked.len(), 2, "the page after the evidence is not read");

        let none: Vec<Vec<VaultSection>> = pages(2)
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .filter(|s| section_evidence(s).is_none())
                    .collect()
            })
            .collect();
        let (found, asked) = run(&none).await;
        assert_eq!(found, None);
        assert_eq!(asked.len(), 3, "every page is read");
    }
}
