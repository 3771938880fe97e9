//! The real [`Store`]: Secrets in the operator's namespace, through the API server.
//!
//! Creates are POSTs (a 409 AlreadyExists is a Conflict), replaces are PUTs carrying the
//! expected `metadata.resourceVersion` (a 409 Conflict or a 404 is a Conflict), deletes
//! carry a resourceVersion precondition. Listings are paged. The operator needs `get`, `list`, `create`,
//! `update` and `delete` on Secrets in its own namespace, and nothing elsewhere.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Client, Error as KubeError};

use super::layout::{self, KEYRING_SECRET, ROOT_KEY_SECRET, WipeOnDrop};
use super::{
    ItemKey, ItemRecord, KeyringHead, Listing, RootKeySet, Store, StoreError, StoredKeyring,
    Versioned,
};
use crate::crypto::Keyring;

/// Records per list page: 10,000 records arrive in 20 responses, not one huge one.
const DEFAULT_PAGE_SIZE: u32 = 500;

const FIELD_MANAGER: &str = "monivault";

/// The store on the API server. Cheap to clone; clones share the client.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    page_size: u32,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("namespace", &self.namespace)
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl SecretStore {
    /// The store in `namespace`, the operator's own.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        SecretStore {
            api: Api::namespaced(client, &namespace),
            namespace,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    /// Lists records `page_size` at a time (at least 1); tests use small pages to cover
    /// the continue tokens.
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn get(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.api
            .get_opt(name)
            .await
            .map_err(|source| kube_error(layout::secret_what(name), source))
    }

    /// POST when `expected` is `None`, else PUT at `expected`.
    async fn put(
        &self,
        what: String,
        secret: &mut Secret,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let written = match expected {
            None => self.api.create(&params, secret).await,
            Some(rv) => {
                secret.metadata.resource_version = Some(rv.to_owned());
                let name = secret.metadata.name.clone().unwrap_or_default();
                self.api.replace(&name, &params, secret).await
            }
        };
        let written = match written {
            Ok(written) => WipeOnDrop(written),
            // Replacing an object that is gone: it is not at `expected` any more.
            Err(e) if is_status(&e, 409) || (expected.is_some() && is_status(&e, 404)) => {
                return Err(StoreError::Conflict { what });
            }
            Err(source) => return Err(kube_error(what, source)),
        };
        tracing::debug!(object = %what, created = expected.is_none(), "store write");
        layout::resource_version(&written.0, &what)
    }
}

impl SecretStore {
    /// Deletes `name` only while it is at `expected`; `Ok(false)` if it is gone.
    async fn delete(&self, name: &str, what: String, expected: &str) -> Result<bool, StoreError> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(expected.to_owned()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(name, &params).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) if is_status(&e, 409) => Err(StoreError::Conflict { what }),
            Err(source) => Err(kube_error(what, source)),
        }
    }

    /// The Secrets matching `selector`, a page at a time; with `limit`, only the first
    /// page of that size.
    async fn list(&self, selector: &str, limit: Option<u32>) -> Result<Vec<Secret>, StoreError> {
        let what = || format!("Secrets {selector} in {}", self.namespace);
        let mut params = ListParams::default()
            .labels(selector)
            .limit(limit.unwrap_or(self.page_size));
        let mut secrets = Vec::new();
        loop {
            let page = self
                .api
                .list(&params)
                .await
                .map_err(|source| kube_error(what(), source))?;
            secrets.extend(page.items);
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) if limit.is_none() => params = params.continue_token(&token),
                _ => break,
            }
        }
        Ok(secrets)
    }
}

fn is_status(error: &KubeError, code: u16) -> bool {
    matches!(error, KubeError::Api(status) if status.code == code)
}

fn kube_error(what: String, source: KubeError) -> StoreError {
    StoreError::Kube { what, source }
}

impl Store for SecretStore {
    async fn root_keys(&self) -> Result<Option<Versioned<RootKeySet>>, StoreError> {
        let Some(secret) = self.get(ROOT_KEY_SECRET).await?.map(WipeOnDrop) else {
            return Ok(None);
        };
        let what = layout::secret_what(ROOT_KEY_SECRET);
        layout::versioned(&secret.0, &what, layout::parse_root_keys).map(Some)
    }

    async fn put_root_keys(
        &self,
        keys: &RootKeySet,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        // Both the request and the response are wiped when dropped.
        let mut secret = layout::root_key_secret(keys)?;
        self.put(
            layout::secret_what(ROOT_KEY_SECRET),
            &mut secret.0,
            expected,
        )
        .await
    }

    async fn keyring_head(&self) -> Result<Option<Versioned<StoredKeyring>>, StoreError> {
        let what = layout::secret_what(KEYRING_SECRET);
        self.get(KEYRING_SECRET)
            .await?
            .map(|secret| layout::versioned(&secret, &what, layout::parse_keyring_head))
            .transpose()
    }

    async fn put_keyring_head(
        &self,
        head: &KeyringHead,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let mut secret = layout::head_secret(head)?;
        self.put(layout::secret_what(KEYRING_SECRET), &mut secret, expected)
            .await
    }

    async fn environment(&self, namespace: &str) -> Result<Option<Versioned<Keyring>>, StoreError> {
        let what = layout::environment_what(namespace);
        self.get(&layout::environment_secret_name(namespace))
            .await?
            .map(|secret| {
                layout::versioned(&secret, &what, |s| Ok(layout::parse_environment(s)?.1))
            })
            .transpose()
    }

    async fn put_environment(
        &self,
        namespace: &str,
        keyring: &Keyring,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let mut secret = layout::environment_secret(namespace, keyring)?;
        self.put(layout::environment_what(namespace), &mut secret, expected)
            .await
    }

    async fn delete_environment(
        &self,
        namespace: &str,
        expected: &str,
    ) -> Result<bool, StoreError> {
        self.delete(
            &layout::environment_secret_name(namespace),
            layout::environment_what(namespace),
            expected,
        )
        .await
    }

    async fn list_environments(&self) -> Result<Listing<String, Keyring>, StoreError> {
        let secrets = self.list(&layout::environment_selector(), None).await?;
        Ok(layout::environment_listing(&secrets))
    }

    async fn some_environments(&self, limit: u32) -> Result<Listing<String, Keyring>, StoreError> {
        let secrets = self
            .list(&layout::environment_selector(), Some(limit.max(1)))
            .await?;
        Ok(layout::environment_listing(&secrets))
    }

    async fn record(&self, key: &ItemKey) -> Result<Option<Versioned<ItemRecord>>, StoreError> {
        let what = layout::record_what(key);
        self.get(&layout::record_secret_name(key))
            .await?
            .map(|secret| layout::versioned(&secret, &what, |s| Ok(layout::parse_record(s)?.1)))
            .transpose()
    }

    async fn put_record(
        &self,
        key: &ItemKey,
        record: &ItemRecord,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let mut secret = layout::record_secret(key, record)?;
        self.put(layout::record_what(key), &mut secret, expected)
            .await
    }

    async fn delete_record(&self, key: &ItemKey, expected: &str) -> Result<bool, StoreError> {
        self.delete(
            &layout::record_secret_name(key),
            layout::record_what(key),
            expected,
        )
        .await
    }

    async fn list_records(&self) -> Result<Listing<ItemKey, ItemRecord>, StoreError> {
        let secrets = self.list(&layout::record_selector(), None).await?;
        Ok(layout::record_listing(&secrets))
    }
}
