"""The Management Interface: JSON-RPC 2.0 over HTTP, framed as OpenSIPS' mi_http/httpd do."""
