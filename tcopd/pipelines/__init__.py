"""tcopd.pipelines"""
