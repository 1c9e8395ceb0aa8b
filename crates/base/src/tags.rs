//! Cache tags as origins send them.

use http::{HeaderMap, HeaderName};

/// The response headers cache tags are read from by default, by the cache
/// and the versioned server alike: Akamai's, Cloudflare's and Fastly's.
pub fn default_tag_headers() -> Vec<HeaderName> {
    ["edge-cache-tag", "cache-tag", "surrogate-key"]
        .into_iter()
        .map(HeaderName::from_static)
        .collect()
}

/// The cache tags in `headers`' values of `names`, split on commas and
/// spaces (Akamai and Cloudflare separate them with commas, Fastly with
/// spaces); tags that are not visible ASCII are dropped.
pub fn tags_in<'a>(headers: &'a HeaderMap, names: &'a [HeaderName]) -> impl Iterator<Item = String> + 'a {
    names
        .iter()
        .flat_map(|name| headers.get_all(name))
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ' ', '\t']))
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn tags_are_read_from_every_vendors_header_split_as_each_splits_them() {
        let mut headers = HeaderMap::new();
        headers.insert("edge-cache-tag", HeaderValue::from_static("product-42, sale"));
        headers.insert("cache-tag", HeaderValue::from_static("cf-a,cf-b"));
        headers.insert("surrogate-key", HeaderValue::from_static("fastly-a  fastly-b"));
        headers.insert("x-other", HeaderValue::from_static("not-a-tag"));
        let tags: Vec<String> = tags_in(&headers, &default_tag_headers()).collect();
        assert_eq!(tags, ["product-42", "sale", "cf-a", "cf-b", "fastly-a", "fastly-b"]);
    }

    proptest::proptest! {
        #[test]
        fn any_header_value_gives_tags_without_separators_or_empties(value in proptest::collection::vec(0u8..=255, 0..200)) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert("surrogate-key", value);
            }
            for tag in tags_in(&headers, &default_tag_headers()) {
                proptest::prop_assert!(!tag.is_empty());
                proptest::prop_assert!(!tag.contains([',', ' ', '\t']));
            }
        }
    }
}
