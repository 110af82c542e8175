UPDATE ceiling_job SET status = 'completed', finished_at = now() WHERE id = (:ids::bigint[])[INDEX] AND status = 'processing' AND worker = 'w' || :client_id::text;
