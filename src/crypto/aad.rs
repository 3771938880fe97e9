//! Associated data: the context an AEAD ciphertext is bound to.
//!
//! Every part is length-prefixed, so no two different contexts encode to the same bytes
//! (`("ab", "c")` and `("a", "bc")` differ).

pub(crate) struct Aad(Vec<u8>);

impl Aad {
    /// Starts the AAD with a domain label, so a data ciphertext can never be taken for a
    /// sealed one or a wrapped key, even under the same key.
    pub(crate) fn new(domain: &str) -> Self {
        let mut aad = Aad(Vec::with_capacity(96));
        aad.part(domain.as_bytes());
        aad
    }

    pub(crate) fn part(&mut self, bytes: &[u8]) -> &mut Self {
        // Inputs are names bounded far below 4 GiB; saturate rather than wrap if not.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.part(s.as_bytes())
    }

    pub(crate) fn u32(&mut self, n: u32) -> &mut Self {
        self.part(&n.to_be_bytes())
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_unambiguous() {
        let mut a = Aad::new("d");
        a.str("ab").str("c");
        let mut b = Aad::new("d");
        b.str("a").str("bc");
        assert_ne!(a.as_bytes(), b.as_bytes());
    }
}
